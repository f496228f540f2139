//! Controller references, as client-go's ControllerRefManager keeps them:
//! an owner claims the objects its selector matches (adopting orphans, not
//! while either is being deleted) and releases those it controls that no
//! longer match. Shared by the ReplicaSet controller (pods) and the
//! Deployment controller (ReplicaSets).

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use orch_core::api::{ApiClient, ApiError};
use orch_core::object::{Kind, Object};
use orch_core::runtime::ObjectRef;
use orch_core::selector::Selector;

use super::garbage_collector::update;

/// The controlling owner reference of `object`, if any.
pub fn controller_of(object: &Object) -> Option<&OwnerReference> {
    object
        .metadata()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// The object of `kind` (in `object`'s namespace) that controls `object`.
pub fn controller_key(object: &Object, kind: Kind) -> Option<ObjectRef> {
    let owner = controller_of(object)?;
    (owner.kind == kind.name()).then(|| ObjectRef {
        kind,
        namespace: object.metadata().namespace.clone(),
        name: owner.name.clone(),
    })
}

/// A controller reference to `owner` (what the objects it makes carry).
pub fn controller_reference(owner: &Object) -> OwnerReference {
    OwnerReference {
        api_version: owner.kind().api_version().into(),
        kind: owner.kind().name().into(),
        name: owner.metadata().name.clone().unwrap_or_default(),
        uid: owner.metadata().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Of `candidates` (the owner's namespace's objects of the owned kind),
/// those `owner` controls once matching orphans are adopted and owned
/// objects that stopped matching are released. Every change is an update
/// guarded by the version read: a stale cache makes it a conflict, retried
/// by the caller's queue.
pub async fn claim(
    client: &mut ApiClient,
    owner: &Object,
    selector: &Selector,
    candidates: Vec<Arc<Object>>,
) -> Result<Vec<Arc<Object>>, ApiError> {
    let uid = owner.metadata().uid.clone().unwrap_or_default();
    let owner_deleting = owner.metadata().deletion_timestamp.is_some();
    let mut owned = Vec::new();
    for object in candidates {
        let labels = object.metadata().labels.clone().unwrap_or_default();
        let matches = !selector.is_everything() && selector.matches(&labels);
        let deleting = object.metadata().deletion_timestamp.is_some();
        match controller_of(&object) {
            Some(reference) if reference.uid == uid => {
                if matches {
                    owned.push(object);
                } else if !deleting {
                    let mut released = object.as_ref().clone();
                    if let Some(references) = &mut released.metadata_mut().owner_references {
                        references.retain(|r| r.uid != uid);
                    }
                    update(client, &released).await?;
                }
            }
            None if matches && !owner_deleting && !deleting => {
                let mut adopted = object.as_ref().clone();
                adopted
                    .metadata_mut()
                    .owner_references
                    .get_or_insert_with(Vec::new)
                    .push(controller_reference(owner));
                match client.update(&adopted, false).await {
                    Ok(now) => owned.push(Arc::new(now)),
                    Err(ApiError::NotFound(_)) => {}
                    Err(error) => return Err(error),
                }
            }
            _ => {}
        }
    }
    Ok(owned)
}
