//! Updates, patches and deletes: read the current object, build the new
//! one, write it guarded by the mod revision read. With a resourceVersion
//! precondition a lost race is a Conflict; without one the write retries
//! on the newer object.

use orch_core::api::{ApiError, kind_prefix, object_key};
use orch_core::object::{Kind, Object};
use serde_json::Value;

use super::service_alloc::{self, Allocation};
use super::{
    DeleteOptions, RETRIES, Registry, Written, conflict, guard, name_of, object_from,
    parse_revision, request, stored_bytes, stored_value, succeeded, uid_conflict,
};
use crate::api::admission::{self, has_status, resource_name};
use crate::store::types::{KeyValue, Op, Txn};

/// Which part of the object an update replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateKind {
    /// Everything but the status (kept as stored).
    Object,
    /// The status only.
    Status,
}

/// Namespaces the system needs (the controllers' Lease lives in
/// kube-system): deleting them is refused, as Kubernetes does.
const PROTECTED_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// Metadata the server owns: kept from the stored object whatever the
/// request says.
const SERVER_OWNED: &[&str] = &[
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
];

/// Every attempt lost its race to another writer.
pub(super) fn contended(kind: Kind, name: &str) -> ApiError {
    ApiError::Conflict(format!(
        "{} \"{name}\": too many concurrent writers; try again",
        resource_name(kind)
    ))
}

enum Attempt {
    Done(Written),
    /// Someone wrote in between: read again.
    Raced,
}

impl Registry {
    pub async fn update(
        &self,
        kind: Kind,
        namespace: &str,
        bytes: &[u8],
        dry_run: bool,
        update: UpdateKind,
    ) -> Result<Written, ApiError> {
        let (mut object, warnings) = admission::decode(kind, bytes)?;
        admission::settle_namespace(&mut object, namespace)?;
        let precondition = parse_revision(
            object
                .metadata()
                .resource_version
                .as_deref()
                .unwrap_or_default(),
        )?;
        let requested = serde_json::to_value(&object)
            .map_err(|e| ApiError::Internal(format!("encoding: {e}")))?;
        let name = name_of(&object)?;
        let namespace = object.metadata().namespace.clone();
        let mut written = self
            .replace(
                kind,
                namespace.as_deref(),
                &name,
                precondition,
                dry_run,
                update,
                |_| Ok(requested.clone()),
            )
            .await?;
        written.warnings = warnings;
        Ok(written)
    }

    /// Applies a JSON merge patch to the stored object (or its status).
    pub async fn patch(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        patch: &[u8],
        dry_run: bool,
        update: UpdateKind,
    ) -> Result<Written, ApiError> {
        let patch: Value = serde_json::from_slice(patch)
            .map_err(|e| ApiError::Invalid(format!("patch: not JSON: {e}")))?;
        if !patch.is_object() {
            return Err(ApiError::Invalid("patch: must be a JSON object".into()));
        }
        // A patch may set a resourceVersion: then it is a precondition.
        let precondition = parse_revision(
            patch["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default(),
        )?;
        let namespace = match (kind.namespaced(), namespace) {
            (false, _) => None,
            (true, "") => Some("default"),
            (true, namespace) => Some(namespace),
        };
        self.replace(
            kind,
            namespace,
            name,
            precondition,
            dry_run,
            update,
            |current| {
                let mut patched = current.clone();
                admission::merge_patch(&mut patched, &patch);
                Ok(patched)
            },
        )
        .await
    }

    /// Reads the object `namespace/name`, builds the new JSON with
    /// `build(current)`, merges by `update`, admits and writes it.
    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        precondition: Option<u64>,
        dry_run: bool,
        update: UpdateKind,
        build: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<Written, ApiError> {
        if update == UpdateKind::Status && !has_status(kind) {
            return Err(ApiError::NotFound(format!(
                "{} has no status subresource",
                resource_name(kind)
            )));
        }
        let key = object_key(kind, namespace, name);
        for attempt in 0..RETRIES {
            let fresh = attempt > 0;
            let kv = self.current_for_write(kind, &key, name, fresh).await?;
            if let Some(wanted) = precondition
                && wanted != kv.mod_revision
            {
                if !fresh {
                    // Perhaps only this replica's copy is behind.
                    continue;
                }
                return Err(conflict(kind, name, kv.mod_revision, wanted));
            }
            let current = stored_value(&kv)?;
            let attempt = match build(&current) {
                Ok(requested) => {
                    let merged = merge(&current, requested, update, has_status(kind));
                    self.write_replacement(kind, &key, &kv, merged, dry_run)
                        .await
                }
                Err(error) => Err(error),
            };
            // A refusal worked out on this replica's own copy may only
            // mean the copy is behind: decide again on a fresh read.
            let attempt = match attempt {
                Err(_) if !fresh => continue,
                other => other?,
            };
            match attempt {
                Attempt::Done(written) => return Ok(written),
                Attempt::Raced if precondition.is_some() => {
                    let now = self.current(kind, &key, name).await?;
                    return Err(conflict(kind, name, now.mod_revision, kv.mod_revision));
                }
                Attempt::Raced => {}
            }
        }
        Err(contended(kind, name))
    }

    async fn write_replacement(
        &self,
        kind: Kind,
        key: &str,
        kv: &KeyValue,
        merged: Value,
        dry_run: bool,
    ) -> Result<Attempt, ApiError> {
        let mut object = object_from(kind, merged, kv.mod_revision)?;
        admission::default_and_validate(&mut object)?;
        // Only a Service's allocations look at the stored object.
        let previous = if kind == Kind::Service {
            Some(stored_value(kv)?)
        } else {
            None
        };
        let meta = object.metadata();
        // The last finalizer gone from an object being deleted: delete it.
        // Unless a grace period still runs (a pod its node agent stops) or a
        // namespace still holds objects (its controller empties it first).
        let finished = meta.deletion_timestamp.is_some()
            && meta.finalizers.as_ref().is_none_or(Vec::is_empty)
            && meta.deletion_grace_period_seconds.is_none_or(|s| s == 0)
            && (kind != Kind::Namespace
                || self
                    .namespace_is_empty(meta.name.as_deref().unwrap_or_default())
                    .await?);
        let allocation = if finished {
            Allocation::default()
        } else {
            self.allocate(&mut object, previous.as_ref()).await?
        };
        if dry_run {
            return Ok(Attempt::Done(Written {
                object,
                warnings: Vec::new(),
            }));
        }
        let mut success = if finished {
            let mut ops = vec![Op::Delete {
                key: key.as_bytes().to_vec(),
            }];
            if let Some(previous) = &previous {
                ops.extend(service_alloc::release(previous));
            }
            ops
        } else {
            // A key keeps its lease (an Event its expiry) when rewritten.
            vec![Op::Put {
                key: key.as_bytes().to_vec(),
                value: stored_bytes(&mut object)?,
                lease: kv.lease,
            }]
        };
        success.extend(allocation.ops.iter().cloned());
        let mut compares = vec![guard(key, kv.mod_revision)];
        compares.extend(allocation.compares.iter().cloned());
        let txn = Txn {
            compares,
            success,
            failure: Vec::new(),
        };
        let response = self.store.write(&request(txn)).await?;
        if !succeeded(&response.outcome)? {
            self.refuse_taken(&allocation).await?;
            return Ok(Attempt::Raced);
        }
        object.metadata_mut().resource_version = Some(response.revision.to_string());
        Ok(Attempt::Done(Written {
            object,
            warnings: Vec::new(),
        }))
    }

    pub async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Object, ApiError> {
        if kind == Kind::Namespace && PROTECTED_NAMESPACES.contains(&name) {
            return Err(ApiError::Forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let key = object_key(kind, Some(namespace).filter(|n| !n.is_empty()), name);
        let finalizer = match options.propagation_policy.as_str() {
            "" | "Background" => None,
            "Foreground" => Some("foregroundDeletion"),
            "Orphan" => Some("orphan"),
            other => {
                return Err(ApiError::Invalid(format!(
                    "propagationPolicy: Unsupported value: {other:?}: supported values: \"Background\", \"Foreground\", \"Orphan\""
                )));
            }
        };
        for _ in 0..RETRIES {
            let kv = self.current(kind, &key, name).await?;
            if let Some(wanted) = options.resource_version
                && wanted != kv.mod_revision
            {
                return Err(conflict(kind, name, kv.mod_revision, wanted));
            }
            let mut value = stored_value(&kv)?;
            if let Some(wanted) = &options.uid {
                let current = value["metadata"]["uid"].as_str().unwrap_or_default();
                if current != wanted {
                    return Err(uid_conflict(kind, name, current, wanted));
                }
            }
            let mut finalizers: Vec<String> = value["metadata"]["finalizers"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(finalizer) = finalizer
                && !finalizers.iter().any(|f| f == finalizer)
            {
                finalizers.push(finalizer.to_string());
            }
            let grace = self.grace_period(kind, &value, options);
            let waits = !finalizers.is_empty()
                || grace.is_some()
                || (kind == Kind::Namespace && !self.namespace_is_empty(name).await?);
            let op = if waits {
                if !value["metadata"]["deletionTimestamp"].is_null() {
                    // Already being deleted: nothing more to do.
                    return object_from(kind, value, kv.mod_revision);
                }
                let seconds = grace.unwrap_or(0);
                value["metadata"]["deletionTimestamp"] =
                    serde_json::to_value(admission::now_plus(seconds))
                        .map_err(|e| ApiError::Internal(format!("encoding: {e}")))?;
                value["metadata"]["deletionGracePeriodSeconds"] = Value::from(seconds);
                value["metadata"]["finalizers"] = Value::from(finalizers);
                if kind == Kind::Namespace {
                    value["status"]["phase"] = Value::from("Terminating");
                }
                Op::Put {
                    key: key.as_bytes().to_vec(),
                    value: serde_json::to_vec(&value)
                        .map_err(|e| ApiError::Internal(format!("encoding: {e}")))?,
                    lease: kv.lease,
                }
            } else {
                Op::Delete {
                    key: key.as_bytes().to_vec(),
                }
            };
            if options.dry_run {
                return object_from(kind, value, kv.mod_revision);
            }
            let mut success = Vec::new();
            if kind == Kind::Service && matches!(op, Op::Delete { .. }) {
                success.extend(service_alloc::release(&value));
            }
            success.insert(0, op);
            let txn = Txn {
                compares: vec![guard(&key, kv.mod_revision)],
                success,
                failure: Vec::new(),
            };
            let response = self.store.write(&request(txn)).await?;
            if succeeded(&response.outcome)? {
                return object_from(kind, value, response.revision);
            }
            if options.resource_version.is_some() {
                let now = self.current(kind, &key, name).await?;
                return Err(conflict(kind, name, now.mod_revision, kv.mod_revision));
            }
        }
        Err(ApiError::Conflict(format!(
            "{} \"{name}\": too many concurrent writers; try again",
            resource_name(kind)
        )))
    }

    /// A pod on a node is deleted gracefully: marked, then removed by its
    /// node agent once its containers stopped (or at once with grace 0).
    fn grace_period(&self, kind: Kind, value: &Value, options: &DeleteOptions) -> Option<i64> {
        if kind != Kind::Pod
            || value["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        {
            return None;
        }
        let seconds = match options.grace_period_seconds {
            Some(seconds) if seconds >= 0 => seconds,
            _ => value["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30),
        };
        (seconds > 0).then_some(seconds)
    }

    async fn namespace_is_empty(&self, namespace: &str) -> Result<bool, ApiError> {
        for kind in Kind::ALL.iter().copied().filter(|k| k.namespaced()) {
            let prefix = kind_prefix(kind, Some(namespace));
            if !self
                .store
                .range(prefix.as_bytes(), None, 1)
                .await?
                .kvs
                .is_empty()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Builds the JSON to store from the stored one and the requested one.
fn merge(current: &Value, mut requested: Value, update: UpdateKind, with_status: bool) -> Value {
    let mut merged = match update {
        UpdateKind::Status => {
            let mut merged = current.clone();
            merged["status"] = requested["status"].take();
            merged
        }
        UpdateKind::Object => {
            if with_status {
                requested["status"] = current["status"].clone();
            }
            requested
        }
    };
    for field in SERVER_OWNED {
        merged["metadata"][*field] = current["metadata"][*field].clone();
    }
    if update == UpdateKind::Object && admission::spec_of(&merged) != admission::spec_of(current) {
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        merged["metadata"]["generation"] = Value::from(generation + 1);
    }
    if let Some(meta) = merged["metadata"].as_object_mut() {
        meta.retain(|_, v| !v.is_null());
    }
    if merged["status"].is_null()
        && let Some(map) = merged.as_object_mut()
    {
        map.remove("status");
    }
    merged
}
