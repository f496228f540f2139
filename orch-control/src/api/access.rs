//! How the API server reaches the store: every replica serves the API;
//! writes go to the Raft leader (this replica when it leads); reads and
//! watches are served from this replica's own copy, reads after a read
//! index check so they are linearizable on followers too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_core::api::ApiError;

use crate::store::raft::client::{ClientError, StoreClient};
use crate::store::raft::node::{RaftNode, WriteError};
use crate::store::types::{KeyValue, RangeResult, Request, Response, Revision};
use crate::store::watch::Watcher;

pub struct StoreAccess {
    node: Arc<RaftNode>,
    timeout: Duration,
    /// A client of the current members, this replica first; rebuilt when
    /// the membership changes.
    client: Mutex<Option<(Vec<String>, StoreClient)>>,
}

fn store_error(error: ClientError) -> ApiError {
    match error {
        ClientError::Refused(WriteError::Rejected(reason)) => ApiError::Invalid(reason),
        other => ApiError::Unavailable(format!("the store: {other}")),
    }
}

impl StoreAccess {
    pub fn new(node: Arc<RaftNode>, timeout: Duration) -> Self {
        Self {
            node,
            timeout,
            client: Mutex::new(None),
        }
    }

    fn client(&self) -> Result<StoreClient, ApiError> {
        let metrics = self.node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        // This replica first: when it leads, nothing leaves the process
        // but a loopback call.
        let mut addrs: Vec<String> = Vec::new();
        if let Some(own) = membership.get_node(&self.node.id) {
            addrs.push(own.addr.clone());
        }
        addrs.extend(
            membership
                .nodes()
                .filter(|(id, _)| **id != self.node.id)
                .map(|(_, node)| node.addr.clone()),
        );
        if addrs.is_empty() {
            return Err(ApiError::Unavailable(
                "the cluster has no members yet (bootstrapping)".into(),
            ));
        }
        let mut cached = match self.client.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((known, client)) = cached.as_ref()
            && *known == addrs
        {
            return Ok(client.clone());
        }
        let client = StoreClient::new(&addrs, &self.node.tls, self.timeout).map_err(store_error)?;
        *cached = Some((addrs, client.clone()));
        Ok(client)
    }

    /// Writes through this replica's own batcher when it leads (no gRPC,
    /// TLS or encoding on the way), else through the leader. A direct
    /// write that found this replica no longer leading goes the long way
    /// with the same request id, which the store answers from its record
    /// if the first attempt was committed after all. No quorum is final:
    /// the long way would only wait on the same missing majority again.
    pub async fn write(&self, request: &Request) -> Result<Response, ApiError> {
        let leads = self.node.raft.metrics().borrow().current_leader == Some(self.node.id);
        if leads {
            match self.node.write(request.clone()).await {
                Ok(response) => return Ok(response),
                Err(WriteError::Rejected(reason)) => return Err(ApiError::Invalid(reason)),
                Err(error @ WriteError::NoQuorum(_)) => {
                    return Err(ApiError::Unavailable(format!("the store: {error}")));
                }
                Err(WriteError::NotLeader { .. } | WriteError::Stopped(_)) => {}
            }
        }
        self.client()?.write(request).await.map_err(store_error)
    }

    /// A linearizable page of keys under `prefix`, read from this
    /// replica's own state once it has applied everything committed before
    /// the call (the read index, from the leader when this is a follower).
    pub async fn range(
        &self,
        prefix: &[u8],
        start: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<RangeResult, ApiError> {
        self.node
            .read_barrier()
            .await
            .map_err(|e| ApiError::Unavailable(format!("the store: {e}")))?;
        let store = self.node.store();
        let prefix = prefix.to_vec();
        tokio::task::spawn_blocking(move || store.range(&prefix, start.as_deref(), limit))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// One key, linearizably; with the store revision read at.
    pub async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision), ApiError> {
        // A prefix range from the key itself: the key sorts first among the
        // keys it prefixes, so one item tells whether it exists.
        let page = self.range(key.as_bytes(), None, 1).await?;
        let found = page.kvs.into_iter().find(|kv| kv.key == key.as_bytes());
        Ok((found, page.revision))
    }

    /// One key as this replica has it now, without a read-index round:
    /// for writes guarded by the mod revision read, where a stale copy only
    /// fails the guard.
    pub async fn get_local(&self, key: &str) -> Result<Option<KeyValue>, ApiError> {
        let store = self.node.store();
        let key = key.as_bytes().to_vec();
        tokio::task::spawn_blocking(move || store.get(&key))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Changes under `prefix` from revision `start`, from this replica.
    pub fn watch(&self, prefix: &[u8], start: Revision) -> Result<Watcher, ApiError> {
        self.node
            .watch(prefix.to_vec(), start)
            .map_err(|error| match error {
                crate::store::StoreError::Compacted {
                    requested,
                    compacted,
                } => ApiError::Gone(format!(
                    "too old resource version: {} ({compacted})",
                    requested.saturating_sub(1)
                )),
                other => ApiError::Internal(other.to_string()),
            })
    }
}
