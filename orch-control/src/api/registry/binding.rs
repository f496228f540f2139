//! Pod bindings (the scheduler's `pods/binding`): `spec.nodeName` and the
//! PodScheduled condition, set once. Like Kubernetes' binding storage this
//! is a guarded update of those two fields of the stored pod, worked on the
//! typed object: no generic merge, no revalidation of a pod that was valid
//! when stored (only the node name is new). Every scheduled pod takes this
//! path, so its cost is the scheduler's.

use k8s_openapi::api::core::v1::{Binding, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use orch_core::api::{ApiError, object_key};
use orch_core::object::{Kind, Object};

use super::{RETRIES, Registry, Written, guard, object_from_kv, request, stored_bytes, succeeded};
use crate::store::types::{Op, Txn};

/// What a Binding asks, checked.
struct Target {
    pod: String,
    namespace: String,
    node: String,
    uid: Option<String>,
}

fn target(namespace: &str, bytes: &[u8]) -> Result<Target, ApiError> {
    let binding: Binding =
        serde_json::from_slice(bytes).map_err(|e| ApiError::Invalid(format!("Binding: {e}")))?;
    let pod = binding.metadata.name.clone().unwrap_or_default();
    if pod.is_empty() {
        return Err(ApiError::Invalid(
            "metadata.name: Required value: the pod to bind".into(),
        ));
    }
    let node = binding.target.name.clone().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::Invalid("target.name: Required value".into()));
    }
    if let Some(message) = orch_core::names::is_dns1123_subdomain(&node).first() {
        return Err(ApiError::Invalid(format!(
            "target.name: Invalid value: {node:?}: {message}"
        )));
    }
    if let Some(kind) = binding
        .target
        .kind
        .as_deref()
        .filter(|k| !k.is_empty() && *k != "Node")
    {
        return Err(ApiError::Invalid(format!(
            "target.kind: Unsupported value: {kind:?}: supported values: \"Node\""
        )));
    }
    let namespace = Some(namespace)
        .filter(|n| !n.is_empty())
        .or(binding.metadata.namespace.as_deref())
        .unwrap_or("default")
        .to_owned();
    Ok(Target {
        pod,
        namespace,
        node,
        uid: binding.metadata.uid,
    })
}

impl Target {
    /// Why `pod` may not be bound, if it may not.
    fn refusal(&self, pod: &Object) -> Option<ApiError> {
        let refused = |why: String| {
            Some(ApiError::Conflict(format!(
                "Operation cannot be fulfilled on pods/binding \"{}\": {why}",
                self.pod
            )))
        };
        let Object::Pod(inner) = pod else {
            return refused("not a pod".into());
        };
        if let Some(uid) = &self.uid
            && inner.metadata.uid.as_deref() != Some(uid.as_str())
        {
            return refused(format!("the pod's uid is not {uid}"));
        }
        if inner.metadata.deletion_timestamp.is_some() {
            return refused(format!(
                "pod {} is being deleted, cannot be assigned to a host",
                self.pod
            ));
        }
        let bound = inner.spec.as_ref().and_then(|s| s.node_name.as_deref());
        if let Some(bound) = bound.filter(|n| !n.is_empty()) {
            return refused(format!(
                "pod {} is already assigned to node \"{bound}\"",
                self.pod
            ));
        }
        None
    }

    /// Sets the node and PodScheduled=True (replacing any earlier
    /// PodScheduled, such as the scheduler's Unschedulable).
    fn apply(&self, pod: &mut Object) {
        let Object::Pod(inner) = pod else {
            return;
        };
        inner.spec.get_or_insert_with(Default::default).node_name = Some(self.node.clone());
        let status = inner.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        conditions.retain(|c| c.type_ != "PodScheduled");
        conditions.push(PodCondition {
            type_: "PodScheduled".into(),
            status: "True".into(),
            last_transition_time: Some(Time(orch_core::time::now())),
            ..PodCondition::default()
        });
    }
}

impl Registry {
    /// Binds a pod to a node. `bytes` is a v1 Binding: metadata.name is the
    /// pod, target the node; a uid in its metadata must be the pod's.
    pub async fn bind(
        &self,
        namespace: &str,
        bytes: &[u8],
        dry_run: bool,
    ) -> Result<Written, ApiError> {
        let target = target(namespace, bytes)?;
        let key = object_key(Kind::Pod, Some(&target.namespace), &target.pod);
        for attempt in 0..RETRIES {
            // This replica's copy first; a refusal or a lost race on it is
            // decided again on a fresh (linearizable) read.
            let fresh = attempt > 0;
            let kv = self
                .current_for_write(Kind::Pod, &key, &target.pod, fresh)
                .await?;
            let mut pod = object_from_kv(Kind::Pod, &kv)?;
            if let Some(refusal) = target.refusal(&pod) {
                if fresh {
                    return Err(refusal);
                }
                continue;
            }
            target.apply(&mut pod);
            if dry_run {
                return Ok(Written {
                    object: pod,
                    warnings: Vec::new(),
                });
            }
            let txn = Txn {
                compares: vec![guard(&key, kv.mod_revision)],
                success: vec![Op::Put {
                    key: key.as_bytes().to_vec(),
                    value: stored_bytes(&mut pod)?,
                    lease: kv.lease,
                }],
                failure: Vec::new(),
            };
            let response = self.store.write(&request(txn)).await?;
            if succeeded(&response.outcome)? {
                pod.metadata_mut().resource_version = Some(response.revision.to_string());
                return Ok(Written {
                    object: pod,
                    warnings: Vec::new(),
                });
            }
        }
        Err(super::write::contended(Kind::Pod, &target.pod))
    }
}
