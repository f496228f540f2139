//! Label selectors with Kubernetes' semantics (`k8s.io/apimachinery/pkg/labels`):
//! the `kubectl -l` string form, `metav1.LabelSelector`, and matching, so a
//! Deployment or Service selects the same Pods here as in Kubernetes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::names;
use crate::validation::{Errors, FieldError, Path, q, render_list, validate_label_selector};

mod parse;

/// How a requirement relates a label's value to its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// The label is set to one of the values.
    In,
    /// The label is unset, or set to none of the values.
    NotIn,
    /// The label is set.
    Exists,
    /// The label is unset.
    DoesNotExist,
    /// The label is set to the value (`=` or `==`).
    Equals,
    /// The label is unset, or set to another value.
    NotEquals,
    /// The label is an integer greater than the value (node selectors).
    Gt,
    /// The label is an integer less than the value (node selectors).
    Lt,
}

impl Operator {
    /// Go's `selection.Operator` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Exists => "exists",
            Operator::DoesNotExist => "!",
            Operator::Equals => "=",
            Operator::NotEquals => "!=",
            Operator::Gt => "gt",
            Operator::Lt => "lt",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Go's aggregate error text: one error alone, several in brackets.
fn join_errors(errs: &[FieldError]) -> String {
    let texts: Vec<String> = errs.iter().map(ToString::to_string).collect();
    match texts.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", texts.join(", ")),
    }
}

/// Why a selector is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The string form does not parse; `offset` is a byte offset into it.
    #[error("{message} (at offset {offset})")]
    Parse { offset: usize, message: String },
    /// A requirement or `LabelSelector` field is invalid.
    #[error("{}", join_errors(.0))]
    Invalid(Vec<FieldError>),
}

/// `key <operator> values`; built only through [`Requirement::new`] (or the
/// parsers), so every requirement prints and re-parses to itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    operator: Operator,
    /// Sorted and deduplicated: the semantics are a set's.
    values: Vec<String>,
}

fn check_key(key: &str, field: &str, errs: &mut Errors) {
    let msgs = names::is_qualified_name(key);
    if !msgs.is_empty() {
        errs.invalid(&Path::new(field), q(key), &msgs.join("; "));
    }
}

impl Requirement {
    /// Validates like Go's `labels.NewRequirement`: a qualified-name key, label
    /// values, one value for `=`/`!=`, integers for `gt`/`lt`, none for
    /// `exists`, at least one for `in`/`notin`.
    pub fn new(
        key: impl Into<String>,
        operator: Operator,
        values: Vec<String>,
    ) -> Result<Self, SelectorError> {
        let key = key.into();
        let mut errs = Errors::default();
        check_key(&key, "key", &mut errs);
        let count_error = match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                Some("for 'in', 'notin' operators, values set can't be empty")
            }
            Operator::Equals | Operator::NotEquals if values.len() != 1 => {
                Some("exact-match compatibility requires one single value")
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                Some("values set must be empty for exists and does not exist")
            }
            Operator::Gt | Operator::Lt if values.len() != 1 => {
                Some("for 'Gt', 'Lt' operators, exactly one value is required")
            }
            _ => None,
        };
        if let Some(detail) = count_error {
            errs.invalid(&Path::new("values"), render_list(&values), detail);
        }
        if matches!(operator, Operator::Gt | Operator::Lt) {
            for (i, v) in values.iter().enumerate() {
                if v.parse::<i64>().is_err() {
                    errs.invalid(
                        &Path::new("values").index(i),
                        q(v),
                        "for 'Gt', 'Lt' operators, the value must be an integer",
                    );
                }
            }
        }
        for (i, v) in values.iter().enumerate() {
            let msgs = names::is_label_value(v);
            if !msgs.is_empty() {
                errs.invalid(&Path::new("values").index(i), q(v), &msgs.join("; "));
            }
        }
        if errs.len() > 0 {
            return Err(SelectorError::Invalid(errs.0));
        }
        Ok(Self::unchecked(key, operator, values))
    }

    fn unchecked(key: String, operator: Operator, values: Vec<String>) -> Self {
        let values: BTreeSet<String> = values.into_iter().collect();
        Self {
            key,
            operator,
            values: values.into_iter().collect(),
        }
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values, sorted and without duplicates.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether `labels` satisfy this requirement; `notin` and `!=` match an
    /// absent key, `gt`/`lt` need an integer label.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let has = |v: &String| self.values.binary_search(v).is_ok();
        match self.operator {
            Operator::In | Operator::Equals => value.is_some_and(has),
            Operator::NotIn | Operator::NotEquals => !value.is_some_and(has),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::Gt | Operator::Lt => {
                let (Some(label), [bound]) = (value, self.values.as_slice()) else {
                    return false;
                };
                match (label.parse::<i64>(), bound.parse::<i64>()) {
                    (Ok(label), Ok(bound)) if self.operator == Operator::Gt => label > bound,
                    (Ok(label), Ok(bound)) => label < bound,
                    _ => false,
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    /// Go's `Requirement.String`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values = self.values.join(",");
        match self.operator {
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::Equals => write!(f, "{}={values}", self.key),
            Operator::NotEquals => write!(f, "{}!={values}", self.key),
            Operator::In => write!(f, "{} in ({values})", self.key),
            Operator::NotIn => write!(f, "{} notin ({values})", self.key),
            Operator::Gt => write!(f, "{}>{values}", self.key),
            Operator::Lt => write!(f, "{}<{values}", self.key),
        }
    }
}

/// A conjunction of requirements, kept sorted by key (as Go does) so equal
/// selectors print equally. No requirements matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
    /// Go's `labels.Nothing()`: what a nil `*LabelSelector` means.
    nothing: bool,
}

impl Selector {
    /// Matches every label set.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Matches no label set (prints as "", like Go's).
    pub fn nothing() -> Self {
        Self {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// All of `requirements`, sorted (stably) by key.
    pub fn new(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Self {
            requirements,
            nothing: false,
        }
    }

    /// `key=value` for each entry, unvalidated like Go's `SelectorFromSet`
    /// (the fields it comes from are validated elsewhere); an empty map
    /// matches everything.
    pub fn from_match_labels(labels: &BTreeMap<String, String>) -> Self {
        Self::new(
            labels
                .iter()
                .map(|(k, v)| Requirement::unchecked(k.clone(), Operator::Equals, vec![v.clone()]))
                .collect(),
        )
    }

    /// Like [`Selector::from_match_labels`], but validates keys and values.
    pub fn try_from_match_labels(labels: &BTreeMap<String, String>) -> Result<Self, SelectorError> {
        labels
            .iter()
            .map(|(k, v)| Requirement::new(k.clone(), Operator::Equals, vec![v.clone()]))
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
    }

    /// Go's `LabelSelectorAsSelector`: an absent selector matches nothing, an
    /// empty one everything.
    pub fn from_label_selector(selector: Option<&LabelSelector>) -> Result<Self, SelectorError> {
        selector.map_or_else(|| Ok(Self::nothing()), Self::try_from)
    }

    /// Whether every requirement matches `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether this selects everything (Go's `Empty`).
    pub fn is_everything(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// Whether this is [`Selector::nothing`].
    pub fn is_nothing(&self) -> bool {
        self.nothing
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// This selector and `requirement` too (keeps the key order).
    pub fn and(mut self, requirement: Requirement) -> Self {
        let at = self
            .requirements
            .partition_point(|r| r.key <= requirement.key);
        self.requirements.insert(at, requirement);
        self
    }

    /// The single value `key` must have, if the selector pins one (Go's
    /// `RequiresExactMatch`), e.g. to look objects up by that label.
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        let r = self.requirements.iter().find(|r| r.key == key)?;
        match (r.operator, r.values.as_slice()) {
            (Operator::Equals | Operator::In, [value]) => Some(value),
            _ => None,
        }
    }
}

impl fmt::Display for Selector {
    /// Go's `String`: requirements joined by ",", in key order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl TryFrom<&LabelSelector> for Selector {
    type Error = SelectorError;

    /// Checks with the same validation as every object's selectors (Go's
    /// `ValidateLabelSelector`; errors name the field path), then converts
    /// as `LabelSelectorAsSelector`.
    fn try_from(selector: &LabelSelector) -> Result<Self, SelectorError> {
        let mut errs = Errors::default();
        validate_label_selector(selector, &Path::new(""), &mut errs);
        if errs.len() > 0 {
            return Err(SelectorError::Invalid(errs.0));
        }
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::unchecked(
                key.clone(),
                Operator::Equals,
                vec![value.clone()],
            ));
        }
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let operator = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                // Validation refused any other operator above; stay total.
                other => {
                    let path = Path::new("matchExpressions").index(i).child("operator");
                    errs.invalid(&path, q(other), "not a valid selector operator");
                    return Err(SelectorError::Invalid(errs.0));
                }
            };
            let values = expr.values.clone().unwrap_or_default();
            requirements.push(Requirement::unchecked(expr.key.clone(), operator, values));
        }
        Ok(Self::new(requirements))
    }
}

impl TryFrom<LabelSelector> for Selector {
    type Error = SelectorError;

    fn try_from(selector: LabelSelector) -> Result<Self, SelectorError> {
        Self::try_from(&selector)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    /// The `kubectl -l` syntax, as Go's `labels.Parse`:
    /// `app=web,tier!=db,env in (a,b),!legacy,x notin (y),key,n>3`.
    fn from_str(s: &str) -> Result<Self, SelectorError> {
        parse::parse(s).map(Self::new)
    }
}

#[cfg(test)]
mod tests;
