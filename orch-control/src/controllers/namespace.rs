//! The namespace controller: a namespace being deleted (Terminating) has
//! everything in it deleted; once it is empty, deleting it again removes
//! it (the API server refuses to while anything is left, so a lagging cache
//! cannot remove a namespace too early).

use std::sync::Arc;
use std::time::Duration;

use orch_core::api::proto::DeleteRequest;
use orch_core::api::{ApiClient, ApiError};
use orch_core::object::{Kind, Object};
use orch_core::runtime::{Cache, Change, Next, WorkQueue};

/// How often a namespace whose content is slow to go (pods stopping on
/// their nodes) is looked at again, besides the content's own events.
const RECHECK: Duration = Duration::from_secs(2);

/// Delete options that touch only this object, not a later one of its
/// name.
fn only(object: &Object) -> DeleteRequest {
    DeleteRequest {
        uid: object.metadata().uid.clone().unwrap_or_default(),
        ..DeleteRequest::default()
    }
}

pub struct NamespaceController {
    cache: Arc<Cache>,
    pub queue: Arc<WorkQueue<String>>,
}

impl NamespaceController {
    pub fn new(cache: Arc<Cache>) -> Arc<Self> {
        Arc::new(Self {
            cache,
            queue: WorkQueue::new(),
        })
    }

    /// The namespace, if it is being deleted.
    fn terminating(&self, namespace: &str) -> Option<Arc<Object>> {
        self.cache
            .get(&orch_core::runtime::ObjectRef {
                kind: Kind::Namespace,
                namespace: None,
                name: namespace.into(),
            })
            .filter(|ns| ns.metadata().deletion_timestamp.is_some())
    }

    pub fn on_change(&self, change: &Change) {
        let object = match change {
            Change::Applied { new, .. } => new,
            Change::Deleted(object) => object,
        };
        let meta = object.metadata();
        if object.kind() == Kind::Namespace {
            if meta.deletion_timestamp.is_some()
                && let Some(name) = &meta.name
            {
                self.queue.add(name.clone());
            }
        } else if let Change::Deleted(_) = change
            && let Some(namespace) = meta
                .namespace
                .as_deref()
                .filter(|_| object.kind().namespaced())
            && self.terminating(namespace).is_some()
        {
            self.queue.add(namespace.to_string());
        }
    }

    pub async fn reconcile(
        &self,
        client: &mut ApiClient,
        namespace: String,
    ) -> Result<Next, ApiError> {
        let Some(terminating) = self.terminating(&namespace) else {
            return Ok(Next::Done);
        };
        let content = self.cache.select(|object| {
            object.kind().namespaced()
                && object.metadata().namespace.as_deref() == Some(namespace.as_str())
        });
        for object in &content {
            if object.metadata().deletion_timestamp.is_some() {
                continue;
            }
            let name = object.metadata().name.clone().unwrap_or_default();
            match client
                .delete(object.kind(), Some(&namespace), &name, &only(object))
                .await
            {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        if !content.is_empty() {
            return Ok(Next::After(RECHECK));
        }
        // Empty as far as the cache knows: the API server checks the store.
        match client
            .delete(Kind::Namespace, None, &namespace, &only(&terminating))
            .await
        {
            Ok(_) | Err(ApiError::NotFound(_)) => {}
            Err(error) => return Err(error),
        }
        tracing::info!(%namespace, "namespace emptied");
        Ok(Next::After(RECHECK))
    }
}
