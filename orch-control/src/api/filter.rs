//! What lists and watches select: a label selector (kubectl's syntax,
//! parsed by orch-core) and a field selector (`path=value`, `path!=value`
//! over the object's JSON, e.g. `spec.nodeName=n1`, `status.phase=Running`).

use std::collections::BTreeMap;

use orch_core::api::ApiError;
use orch_core::selector::Selector;
use serde_json::Value;

#[derive(Clone, Debug)]
struct FieldRequirement {
    path: Vec<String>,
    value: String,
    equal: bool,
}

/// A label selector and a field selector, both required to match.
#[derive(Clone, Debug)]
pub struct Filter {
    labels: Selector,
    fields: Vec<FieldRequirement>,
}

impl Filter {
    pub fn parse(label_selector: &str, field_selector: &str) -> Result<Self, ApiError> {
        let labels = if label_selector.trim().is_empty() {
            Selector::everything()
        } else {
            label_selector
                .parse::<Selector>()
                .map_err(|e| ApiError::Invalid(format!("labelSelector: {e}")))?
        };
        let mut fields = Vec::new();
        for term in field_selector.split(',').filter(|t| !t.trim().is_empty()) {
            let (path, value, equal) = if let Some((path, value)) = term.split_once("!=") {
                (path, value, false)
            } else if let Some((path, value)) = term.split_once("==") {
                (path, value, true)
            } else if let Some((path, value)) = term.split_once('=') {
                (path, value, true)
            } else {
                return Err(ApiError::Invalid(format!(
                    "fieldSelector: {term:?} is not path=value, path==value or path!=value"
                )));
            };
            let path = path.trim();
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(ApiError::Invalid(format!(
                    "fieldSelector: {term:?}: empty field path"
                )));
            }
            fields.push(FieldRequirement {
                path: path.split('.').map(str::to_string).collect(),
                value: value.trim().to_string(),
                equal,
            });
        }
        Ok(Self { labels, fields })
    }

    /// Whether every object is selected (no label or field requirement).
    pub fn selects_all(&self) -> bool {
        self.labels.is_everything() && self.fields.is_empty()
    }

    /// Whether the object (as JSON) is selected.
    pub fn matches(&self, object: &Value) -> bool {
        let labels: BTreeMap<String, String> = object["metadata"]["labels"]
            .as_object()
            .map(|map| {
                map.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        if !self.labels.matches(&labels) {
            return false;
        }
        self.fields.iter().all(|requirement| {
            let mut at = object;
            for step in &requirement.path {
                at = &at[step.as_str()];
            }
            let actual = match at {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (actual == requirement.value) == requirement.equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_and_fields_both_select() {
        let pod = json!({
            "metadata": {"name": "a", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running"}
        });
        let yes = Filter::parse("app=web", "spec.nodeName=n1,status.phase!=Failed").expect("ok");
        assert!(yes.matches(&pod));
        let no = Filter::parse("app=web", "spec.nodeName==n2").expect("ok");
        assert!(!no.matches(&pod));
        let unscheduled = Filter::parse("", "spec.nodeName=").expect("ok");
        assert!(unscheduled.matches(&json!({"metadata": {"name": "b"}, "spec": {}})));
        assert!(Filter::parse("", "nonsense").is_err());
        assert!(Filter::parse("app in (", "").is_err());
    }
}
