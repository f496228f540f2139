//! Validation of every kind orch serves, with Kubernetes' semantics and
//! wording (`pkg/apis/core/validation`, `pkg/apis/apps/validation`, ...).
//!
//! [`validate`] collects every problem of an object as a [`FieldError`] whose
//! text is exactly what the API server prints:
//! `spec.containers[0].name: Required value`,
//! `spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never"`.
//!
//! Validation expects defaulted objects (see [`crate::defaults`]) but never
//! panics on undefaulted ones: a field that defaulting would fill in is
//! accepted when absent.

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

use crate::names;
use crate::object::Object;

mod apps;
mod cluster;
mod container;
mod meta;
mod pod;
mod probe;
mod resources;
mod scheduling;
mod service;
#[cfg(test)]
mod tests;

pub(crate) use meta::{
    NameRule, selector_matches, validate_annotations, validate_finalizer_name, validate_label_name,
    validate_label_selector, validate_labels,
};

/// Why a field is invalid; Kubernetes' `field.ErrorType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldErrorType {
    /// A required value is missing.
    Required,
    /// The value is malformed or out of range.
    Invalid,
    /// The value must be unique but is not.
    Duplicate,
    /// The value is not one of an enumeration.
    NotSupported,
    /// The value is too long.
    TooLong,
    /// The value is well formed but not allowed here.
    Forbidden,
    /// The value refers to something that does not exist.
    NotFound,
    /// A list has too many items.
    TooMany,
}

impl FieldErrorType {
    /// The canonical text, as Kubernetes prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldErrorType::Required => "Required value",
            FieldErrorType::Invalid => "Invalid value",
            FieldErrorType::Duplicate => "Duplicate value",
            FieldErrorType::NotSupported => "Unsupported value",
            FieldErrorType::TooLong => "Too long",
            FieldErrorType::Forbidden => "Forbidden",
            FieldErrorType::NotFound => "Not found",
            FieldErrorType::TooMany => "Too many",
        }
    }
}

impl fmt::Display for FieldErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with one field; Kubernetes' `field.Error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Field path in Kubernetes' notation: `spec.containers[0].ports[1].containerPort`,
    /// map keys in brackets (`spec.containers[0].resources.limits[memory]`).
    pub path: String,
    pub error_type: FieldErrorType,
    /// The offending value, rendered as Kubernetes renders it: strings
    /// quoted (`"Web"`), numbers bare (`-1`). Never shown for `Required`,
    /// `Forbidden` and `TooLong`.
    pub value: Option<String>,
    /// Explanation; may be empty.
    pub detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.error_type)?;
        let shows_value = !matches!(
            self.error_type,
            FieldErrorType::Required | FieldErrorType::Forbidden | FieldErrorType::TooLong
        );
        if shows_value && let Some(value) = &self.value {
            write!(f, ": {value}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// Every problem found in one object, in the order they were found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Validates one object, collecting every problem.
pub fn validate(object: &Object) -> Result<(), ValidationErrors> {
    let mut errs = Errors::default();
    meta::validate_object_meta(object.metadata(), object.kind(), &mut errs);
    match object {
        Object::Namespace(ns) => cluster::validate_namespace(ns, &mut errs),
        Object::Node(node) => cluster::validate_node(node, &mut errs),
        Object::Pod(p) => pod::validate_pod(p, &mut errs),
        Object::Deployment(d) => apps::validate_deployment(d, &mut errs),
        Object::ReplicaSet(rs) => apps::validate_replica_set(rs, &mut errs),
        Object::Service(svc) => service::validate_service(svc, &mut errs),
        Object::EndpointSlice(slice) => cluster::validate_endpoint_slice(slice, &mut errs),
        Object::Lease(lease) => cluster::validate_lease(lease, &mut errs),
        Object::Event(event) => cluster::validate_event(event, &mut errs),
        Object::ConfigMap(cm) => cluster::validate_config_map(cm, &mut errs),
        Object::Secret(secret) => cluster::validate_secret(secret, &mut errs),
    }
    errs.finish()
}

/// A field path under construction; Kubernetes' `field.Path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Path(String);

impl Path {
    pub(crate) fn new(root: &str) -> Path {
        Path(root.to_string())
    }

    /// `path.name`
    pub(crate) fn child(&self, name: &str) -> Path {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{name}", self.0))
        }
    }

    /// `path[index]`
    pub(crate) fn index(&self, index: usize) -> Path {
        Path(format!("{}[{index}]", self.0))
    }

    /// `path[key]`
    pub(crate) fn key(&self, key: &str) -> Path {
        Path(format!("{}[{key}]", self.0))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The errors of one validation run, with Kubernetes' constructors.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    fn push(
        &mut self,
        path: &Path,
        error_type: FieldErrorType,
        value: Option<String>,
        detail: &str,
    ) {
        self.0.push(FieldError {
            path: path.0.clone(),
            error_type,
            value,
            detail: detail.to_string(),
        });
    }

    pub(crate) fn required(&mut self, path: &Path, detail: &str) {
        self.push(path, FieldErrorType::Required, None, detail);
    }

    /// `value` is already rendered: use [`q`] for strings.
    pub(crate) fn invalid(&mut self, path: &Path, value: impl fmt::Display, detail: &str) {
        self.push(
            path,
            FieldErrorType::Invalid,
            Some(value.to_string()),
            detail,
        );
    }

    pub(crate) fn duplicate(&mut self, path: &Path, value: impl fmt::Display) {
        self.push(path, FieldErrorType::Duplicate, Some(value.to_string()), "");
    }

    pub(crate) fn not_found(&mut self, path: &Path, value: impl fmt::Display) {
        self.push(path, FieldErrorType::NotFound, Some(value.to_string()), "");
    }

    pub(crate) fn forbidden(&mut self, path: &Path, detail: &str) {
        self.push(path, FieldErrorType::Forbidden, None, detail);
    }

    /// `supported` is listed in the order given, quoted.
    pub(crate) fn not_supported(&mut self, path: &Path, value: &str, supported: &[&str]) {
        let list: Vec<String> = supported.iter().map(|s| q(s)).collect();
        let detail = if list.is_empty() {
            String::new()
        } else {
            format!("supported values: {}", list.join(", "))
        };
        self.push(path, FieldErrorType::NotSupported, Some(q(value)), &detail);
    }

    pub(crate) fn too_long(&mut self, path: &Path, max_bytes: usize) {
        let detail = format!("must have at most {max_bytes} bytes");
        self.push(path, FieldErrorType::TooLong, None, &detail);
    }

    pub(crate) fn too_many(&mut self, path: &Path, actual: usize, max: usize) {
        let detail = format!("must have at most {max} items");
        self.push(
            path,
            FieldErrorType::TooMany,
            Some(actual.to_string()),
            &detail,
        );
    }

    /// Go's "exactly one of" rule for union fields (volume sources, probe
    /// and lifecycle handlers): each field set after the first is
    /// Forbidden, none set is Required. Returns the first field set.
    pub(crate) fn one_of(
        &mut self,
        path: &Path,
        fields: &[(&'static str, bool)],
        kind: &str,
    ) -> Option<&'static str> {
        let mut first = None;
        for &(field, present) in fields {
            if !present {
                continue;
            }
            if first.is_some() {
                self.forbidden(
                    &path.child(field),
                    &format!("may not specify more than 1 {kind}"),
                );
            } else {
                first = Some(field);
            }
        }
        if first.is_none() {
            self.required(path, &format!("must specify a {kind}"));
        }
        first
    }

    /// One `Invalid` error per message of a syntax check.
    pub(crate) fn each_invalid(&mut self, path: &Path, value: &str, messages: Vec<String>) {
        for msg in messages {
            self.invalid(path, q(value), &msg);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Drops exact repeats, as Kubernetes' `ToAggregate` does.
    fn finish(self) -> Result<(), ValidationErrors> {
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<FieldError> = self
            .0
            .into_iter()
            .filter(|e| seen.insert(e.to_string()))
            .collect();
        if unique.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(unique))
        }
    }
}

/// A string as Go's `%q` prints it.
pub(crate) fn q(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A string map as Go's `%#v` prints it: `map[string]string{"app":"web"}`.
pub(crate) fn render_map(map: Option<&BTreeMap<String, String>>) -> String {
    let entries: Vec<String> = map
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{}:{}", q(k), q(v)))
        .collect();
    format!("map[string]string{{{}}}", entries.join(", "))
}

/// A string list as Go's `%#v` prints it: `[]string{"a", "b"}`.
pub(crate) fn render_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[]string{{{}}}", items.join(", "))
}

pub(crate) const NEGATIVE: &str = "must be greater than or equal to 0";
pub(crate) const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";
pub(crate) const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// `IsValidPortNum`.
pub(crate) fn validate_port_num(port: i32, path: &Path, errs: &mut Errors) {
    if !(1..=65535).contains(&port) {
        errs.invalid(path, port, PORT_RANGE);
    }
}

/// `ValidatePortNumOrName`: a port number or an IANA service name.
pub(crate) fn validate_port_num_or_name(
    port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
    path: &Path,
    errs: &mut Errors,
) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match port {
        IntOrString::Int(n) => validate_port_num(*n, path, errs),
        IntOrString::String(name) => errs.each_invalid(path, name, names::is_iana_svc_name(name)),
    }
}

/// `value >= 0`, for optional numeric fields.
pub(crate) fn nonnegative(value: Option<i64>, path: &Path, errs: &mut Errors) {
    if let Some(v) = value
        && v < 0
    {
        errs.invalid(path, v, NEGATIVE);
    }
}

/// An IP address (`IsValidIP`).
pub(crate) fn validate_ip(value: &str, path: &Path, errs: &mut Errors) -> Option<std::net::IpAddr> {
    match value.parse::<std::net::IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            errs.invalid(
                path,
                q(value),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            );
            None
        }
    }
}

/// A CIDR (`IsValidCIDR`); returns whether it is IPv4.
pub(crate) fn validate_cidr(value: &str, path: &Path, errs: &mut Errors) -> Option<bool> {
    let parsed = value.split_once('/').and_then(|(ip, len)| {
        let ip: std::net::IpAddr = ip.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (len <= max && !len_has_sign(value)).then_some(ip.is_ipv4())
    });
    if parsed.is_none() {
        errs.invalid(
            path,
            q(value),
            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        );
    }
    parsed
}

fn len_has_sign(cidr: &str) -> bool {
    cidr.rsplit('/')
        .next()
        .is_some_and(|len| len.starts_with('+'))
}
