//! The admission chain every write passes, in order: decode (with warnings
//! for ignored fields), system fields, defaulting, validation (orch-core);
//! namespace lifecycle is checked by the registry against the store. A
//! request refused here writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use orch_core::api::ApiError;
use orch_core::defaults::apply_defaults;
use orch_core::manifest;
use orch_core::object::{Kind, Object};
use orch_core::validation::validate;
use serde_json::Value;

/// "deployments.apps", "pods": how Kubernetes names a resource in messages.
pub fn resource_name(kind: Kind) -> String {
    if kind.group().is_empty() {
        kind.plural().to_string()
    } else {
        format!("{}.{}", kind.plural(), kind.group())
    }
}

/// Decodes a request's object as `kind`; returns it with the warnings for
/// fields that were ignored.
pub fn decode(kind: Kind, bytes: &[u8]) -> Result<(Object, Vec<String>), ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::Invalid(format!("object: not UTF-8 JSON: {e}")))?;
    let document = match manifest::parse_json(text, "request") {
        Some(decoded) => decoded.map_err(|errors| ApiError::Invalid(errors.to_string()))?,
        None => {
            let mut documents = manifest::parse_str(text, "request")
                .map_err(|errors| ApiError::Invalid(errors.to_string()))?;
            if documents.len() != 1 {
                return Err(ApiError::Invalid(format!(
                    "object: expected one object, found {}",
                    documents.len()
                )));
            }
            documents.remove(0)
        }
    };
    if document.object.kind() != kind {
        return Err(ApiError::Invalid(format!(
            "object: kind {} {} does not match the resource {}",
            document.object.kind().api_version(),
            document.object.kind(),
            resource_name(kind)
        )));
    }
    let warnings = document
        .warnings
        .iter()
        .map(|w| format!("{}: {}", w.path, w.reason))
        .collect();
    Ok((document.object, warnings))
}

/// Puts the request's namespace on the object (or checks they agree);
/// cluster-scoped objects have none.
pub fn settle_namespace(object: &mut Object, requested: &str) -> Result<(), ApiError> {
    let kind = object.kind();
    let meta = object.metadata_mut();
    if !kind.namespaced() {
        meta.namespace = None;
        return Ok(());
    }
    match (meta.namespace.as_deref(), requested) {
        (Some(own), requested) if !requested.is_empty() && own != requested => {
            Err(ApiError::Invalid(format!(
                "the namespace of the provided object ({own}) does not match the namespace sent on the request ({requested})"
            )))
        }
        (Some(_), _) => Ok(()),
        (None, "") => {
            meta.namespace = Some("default".into());
            Ok(())
        }
        (None, requested) => {
            meta.namespace = Some(requested.into());
            Ok(())
        }
    }
}

/// Letters Kubernetes uses for generated name suffixes (no vowels, no
/// look-alike digits).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The kernel's random source, opened once (every create takes a uid);
    // on the (theoretical) failure fall back to the clock, still unique
    // enough for a name suffix.
    // Only a successful open is kept: a failed one (EMFILE under load) is
    // tried again next time.
    static URANDOM: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    let file = match URANDOM.get() {
        Some(file) => Ok(file),
        None => std::fs::File::open("/dev/urandom").map(|file| URANDOM.get_or_init(|| file)),
    };
    let read = file.and_then(|file| std::io::Read::read_exact(&mut &*file, &mut bytes));
    if read.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = (nanos >> ((i % 16) * 8)) as u8;
        }
    }
    bytes
}

/// A random RFC 4122 version 4 UUID, as Kubernetes gives every object.
pub fn new_uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// What a create fills in: the name from generateName, uid, creation time,
/// generation; resourceVersion must not be set.
pub fn set_create_fields(object: &mut Object) -> Result<(), ApiError> {
    let meta = object.metadata_mut();
    if meta
        .resource_version
        .as_deref()
        .is_some_and(|v| !v.is_empty())
    {
        return Err(ApiError::Invalid(
            "metadata.resourceVersion: Invalid value: must not be set on objects to be created"
                .into(),
        ));
    }
    if meta.name.as_deref().unwrap_or_default().is_empty()
        && let Some(prefix) = meta.generate_name.as_deref()
    {
        let suffix: String = random_bytes::<5>()
            .iter()
            .map(|b| SUFFIX_ALPHABET[*b as usize % SUFFIX_ALPHABET.len()] as char)
            .collect();
        meta.name = Some(format!("{prefix}{suffix}"));
    }
    meta.resource_version = None;
    meta.uid = Some(new_uid());
    meta.creation_timestamp = Some(now_plus(0));
    meta.generation = Some(1);
    meta.deletion_timestamp = None;
    meta.deletion_grace_period_seconds = None;
    if let Object::Namespace(namespace) = object {
        namespace.status.get_or_insert_with(Default::default).phase = Some("Active".into());
    }
    Ok(())
}

/// Now, `seconds_later`, to the second (Kubernetes' timestamps' precision).
pub fn now_plus(seconds_later: i64) -> Time {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    Time(
        k8s_openapi::jiff::Timestamp::from_second(now.saturating_add(seconds_later))
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Defaulting, then validation; the error reads like the API server's.
/// Kubernetes' DefaultTolerationSeconds admission: a new pod that does not
/// say how long it stays on a not-ready or unreachable node gets
/// NoExecute tolerations for those taints with these seconds, after which
/// the node lifecycle controller evicts it.
pub fn default_tolerations(object: &mut Object, not_ready: i64, unreachable: i64) {
    let Object::Pod(pod) = object else {
        return;
    };
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, seconds) in [
        ("node.kubernetes.io/not-ready", not_ready),
        ("node.kubernetes.io/unreachable", unreachable),
    ] {
        let covered = tolerations.iter().any(|t| {
            let effect = t.effect.as_deref().unwrap_or_default();
            let any_key = t.key.as_deref().unwrap_or_default().is_empty()
                && t.operator.as_deref() == Some("Exists");
            (any_key || t.key.as_deref() == Some(key))
                && (effect.is_empty() || effect == "NoExecute")
        });
        if !covered {
            tolerations.push(k8s_openapi::api::core::v1::Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(seconds),
                value: None,
            });
        }
    }
}

pub fn default_and_validate(object: &mut Object) -> Result<(), ApiError> {
    apply_defaults(object);
    validate(object).map_err(|errors| {
        let kind = object.kind();
        let qualified = if kind.group().is_empty() {
            kind.name().to_string()
        } else {
            format!("{}.{}", kind.name(), kind.group())
        };
        let details: String = errors.0.iter().map(|e| format!("\n  * {e}")).collect();
        ApiError::Invalid(format!(
            "{qualified} \"{}\" is invalid:{details}",
            object.metadata().name.as_deref().unwrap_or_default()
        ))
    })
}

/// Kinds whose status is a subresource: updates of the object keep the
/// stored status, status updates keep everything else.
pub fn has_status(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Pod
            | Kind::Deployment
            | Kind::ReplicaSet
            | Kind::Service
            | Kind::Node
            | Kind::Namespace
    )
}

/// The part of an object that moves `metadata.generation`: all but
/// metadata and status.
pub fn spec_of(value: &Value) -> Value {
    let mut spec = value.clone();
    if let Some(map) = spec.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
        map.remove("apiVersion");
        map.remove("kind");
    }
    spec
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => {
            let mut patch = patch.clone();
            if let Value::Object(map) = &mut patch {
                map.retain(|_, v| !v.is_null());
            }
            *target = patch;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut target,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": null, "y": 1}}),
        );
        assert_eq!(
            target,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"y": 1}})
        );
    }

    #[test]
    fn uids_are_version_4_and_distinct() {
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
