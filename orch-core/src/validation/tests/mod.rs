//! Validation tests: a valid object passes, each broken variant yields the
//! exact line Kubernetes would print.

use serde_json::Value;

use super::validate;
use crate::defaults::apply_defaults;
use crate::object::{Kind, Object};

mod apps;
mod cluster;
mod meta;
mod pod;
mod pod_spec;
mod service;

/// Decodes a manifest given as JSON.
fn object(json: Value) -> Object {
    let api_version = json["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = json["kind"].as_str().unwrap_or_default().to_string();
    let kind = Kind::from_type_meta(&api_version, &kind).expect("a kind orch serves");
    kind.deserialize(json).expect("the test manifest decodes")
}

/// Error lines of an object as given (not defaulted).
fn raw_errors(json: Value) -> Vec<String> {
    match validate(&object(json)) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

/// Error lines after defaulting, which is how objects are validated.
fn errors(json: Value) -> Vec<String> {
    let mut object = object(json);
    apply_defaults(&mut object);
    match validate(&object) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

/// `json` with the value at a JSON pointer replaced (parents are created).
fn set(mut json: Value, pointer: &str, value: Value) -> Value {
    let mut target = &mut json;
    for token in pointer.split('/').skip(1) {
        if target.is_null() && token.parse::<usize>().is_ok() {
            *target = Value::Array(Vec::new());
        }
        target = match target {
            Value::Array(items) => {
                let index: usize = token.parse().expect("an array index");
                if items.len() <= index {
                    items.resize(index + 1, Value::Null);
                }
                &mut items[index]
            }
            other => {
                if !other.is_object() {
                    *other = Value::Object(serde_json::Map::new());
                }
                other
                    .as_object_mut()
                    .expect("an object")
                    .entry(token.to_string())
                    .or_insert(Value::Null)
            }
        };
    }
    *target = value;
    json
}

/// `json` without the value at a JSON pointer.
fn remove(mut json: Value, pointer: &str) -> Value {
    let (parent, last) = pointer.rsplit_once('/').expect("a JSON pointer");
    match json.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(last);
        }
        Some(Value::Array(items)) => {
            items.remove(last.parse::<usize>().expect("an array index"));
        }
        _ => panic!("nothing at {parent}"),
    }
    json
}

/// Asserts that each case yields exactly its expected line.
fn assert_cases(base: &Value, cases: Vec<(Value, String)>) {
    assert_eq!(
        errors(base.clone()),
        Vec::<String>::new(),
        "the base object is valid"
    );
    let mut failures = Vec::new();
    for (json, expected) in cases {
        let got = errors(json);
        if got != vec![expected.clone()] {
            failures.push(format!("expected: {expected}\n     got: {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// One case: `base` with `pointer` set to `value`, expecting `line`.
fn case(base: &Value, pointer: &str, value: Value, line: impl Into<String>) -> (Value, String) {
    (set(base.clone(), pointer, value), line.into())
}
