//! The namespace controller: a namespace being deleted (Terminating) has
//! everything in it deleted; once it is empty, deleting it again removes
//! it (the API server refuses to while anything is left, so a lagging cache
//! cannot remove a namespace too early).

use std::sync::Arc;
use std::time::Duration;

use orch_core::api::proto::DeleteRequest;
use orch_core::api::{ApiClient, ApiError};
use orch_core::object::Kind;
use orch_core::runtime::{Cache, Change, Next, WorkQueue};

/// How often a namespace whose content is slow to go (pods stopping on
/// their nodes) is looked at again, besides the content's own events.
const RECHECK: Duration = Duration::from_secs(2);

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

    fn terminating(&self, namespace: &str) -> bool {
        self.cache
            .get(&orch_core::runtime::ObjectRef {
                kind: Kind::Namespace,
                namespace: None,
                name: namespace.into(),
            })
            .is_some_and(|ns| ns.metadata().deletion_timestamp.is_some())
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
            && self.terminating(namespace)
        {
            self.queue.add(namespace.to_string());
        }
    }

    pub async fn reconcile(
        &self,
        client: &mut ApiClient,
        namespace: String,
    ) -> Result<Next, ApiError> {
        if !self.terminating(&namespace) {
            return Ok(Next::Done);
        }
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
                .delete(
                    object.kind(),
                    Some(&namespace),
                    &name,
                    &DeleteRequest::default(),
                )
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
            .delete(Kind::Namespace, None, &namespace, &DeleteRequest::default())
            .await
        {
            Ok(_) | Err(ApiError::NotFound(_)) => {}
            Err(error) => return Err(error),
        }
        tracing::info!(%namespace, "namespace emptied");
        Ok(Next::After(RECHECK))
    }
}
