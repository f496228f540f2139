//! The store's services for other orch processes: membership changes
//! (join/leave) and the store client protocol (writes, ranges).

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use super::NodeId;
use super::node::{RaftNode, WriteError};
use super::transport::proto::membership_server::{Membership, MembershipServer};
use super::transport::proto::store_server::{Store, StoreServer};
use super::transport::proto::{
    JoinRequest, JoinResponse, LeaveRequest, RaftMessage, SnapshotChunk, SnapshotRequest,
    StatusRequest, StatusResponse,
};
use crate::store::StoreError;
use crate::store::types::{
    Event, RangeResult, Request as StoreRequest, Response as StoreResponse, Revision,
};
use orch_core::api::identity::OrganizationAuthorizer;
use tonic::service::interceptor::InterceptedService;

/// What `Store.Range` asks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RangeQuery {
    pub prefix: Vec<u8>,
    pub start: Option<Vec<u8>>,
    pub limit: usize,
    /// Read-index check with the leader first (the default for clients);
    /// false serves the replica's local state (serializable).
    pub linearizable: bool,
}

/// What `Store.Watch` asks: changes under `prefix` from `start` (0: now).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchQuery {
    pub prefix: Vec<u8>,
    pub start: Revision,
}

/// Why a watch ended.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum WatchError {
    #[error(
        "required revision {requested} has been compacted (oldest kept: {compacted}): relist and watch from the list's revision"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("watch failed: {0}")]
    Failed(String),
}

pub type WatchBatch = Result<Vec<Event>, WatchError>;

pub type WriteReply = Result<StoreResponse, WriteError>;
pub type KeepAliveReply = Result<i64, WriteError>;
pub type RangeReply = Result<RangeResult, WriteError>;

fn encode<T: Serialize>(value: &T) -> Result<RaftMessage, Status> {
    postcard::to_stdvec(value)
        .map(|data| RaftMessage { data })
        .map_err(|e| Status::internal(format!("encoding: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(message: &RaftMessage) -> Result<T, Status> {
    postcard::from_bytes(&message.data)
        .map_err(|e| Status::invalid_argument(format!("decoding: {e}")))
}

pub struct MembershipService {
    node: Arc<RaftNode>,
}

pub struct StoreService {
    node: Arc<RaftNode>,
}

/// Membership changes and status, open to replicas and administrators.
pub fn membership_server(
    node: Arc<RaftNode>,
) -> InterceptedService<MembershipServer<MembershipService>, OrganizationAuthorizer> {
    InterceptedService::new(
        MembershipServer::new(MembershipService { node }),
        super::peer_auth::replicas_and_admins("Membership"),
    )
}

/// The store protocol, open to replicas and administrators.
pub fn store_server(
    node: Arc<RaftNode>,
) -> InterceptedService<StoreServer<StoreService>, OrganizationAuthorizer> {
    let server = StoreServer::new(StoreService { node })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    InterceptedService::new(server, super::peer_auth::replicas_and_admins("Store"))
}

impl MembershipService {
    /// The leader's address when this replica is not the leader.
    async fn leader_elsewhere(&self) -> Result<Option<String>, Status> {
        let metrics = self.node.raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(leader) if leader == self.node.id => Ok(None),
            Some(leader) => metrics
                .membership_config
                .membership()
                .get_node(&leader)
                .map(|node| Some(node.addr.clone()))
                .ok_or_else(|| Status::unavailable("leader address unknown")),
            None => Err(Status::unavailable("no leader (election in progress)")),
        }
    }

    fn members(&self) -> Vec<String> {
        let metrics = self.node.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| format!("{id}={}", node.addr))
            .collect()
    }
}

#[tonic::async_trait]
impl Membership for MembershipService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let join = request.into_inner();
        if let Some(leader) = self.leader_elsewhere().await? {
            return super::client::membership(&leader, &self.node.tls)
                .await?
                .join(join)
                .await;
        }
        if join.addr.is_empty() {
            return Err(Status::invalid_argument("addr: required"));
        }
        let cluster = self.node.cluster.to_string();
        if !join.cluster_id.is_empty() && join.cluster_id != cluster {
            return Err(Status::failed_precondition(format!(
                "cluster_id: node {} asked to join cluster {}, but this is cluster {cluster}",
                join.node_id, join.cluster_id
            )));
        }
        let raft = &self.node.raft;
        let node = BasicNode { addr: join.addr };
        // Blocking: returns once the learner has caught up with the log.
        raft.add_learner(join.node_id, node, true)
            .await
            .map_err(|e| {
                Status::failed_precondition(format!("adding learner {}: {e}", join.node_id))
            })?;
        raft.change_membership(
            ChangeMembers::AddVoterIds(BTreeSet::from([join.node_id])),
            false,
        )
        .await
        .map_err(|e| Status::failed_precondition(format!("promoting {}: {e}", join.node_id)))?;
        tracing::info!(node = join.node_id, "joined as voter");
        Ok(Response::new(JoinResponse {
            members: self.members(),
            cluster_id: cluster,
        }))
    }

    async fn leave(
        &self,
        request: Request<LeaveRequest>,
    ) -> Result<Response<JoinResponse>, Status> {
        let leave = request.into_inner();
        if let Some(leader) = self.leader_elsewhere().await? {
            return super::client::membership(&leader, &self.node.tls)
                .await?
                .leave(leave)
                .await;
        }
        let ids: BTreeSet<NodeId> = BTreeSet::from([leave.node_id]);
        self.node
            .raft
            .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
            .await
            .map_err(|e| Status::failed_precondition(format!("removing {}: {e}", leave.node_id)))?;
        self.node
            .raft
            .change_membership(ChangeMembers::RemoveNodes(ids), false)
            .await
            .map_err(|e| Status::failed_precondition(format!("removing {}: {e}", leave.node_id)))?;
        tracing::info!(node = leave.node_id, "removed from the cluster");
        Ok(Response::new(JoinResponse {
            members: self.members(),
            cluster_id: self.node.cluster.to_string(),
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let metrics = self.node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        Ok(Response::new(StatusResponse {
            node_id: self.node.id,
            leader_id: metrics.current_leader.unwrap_or(0),
            voters,
            learners,
            last_applied_index: metrics.last_applied.map_or(0, |id| id.index),
            cluster_id: self.node.cluster.to_string(),
            members: self.members(),
            revision: self
                .node
                .store()
                .revision()
                .map_err(|e| Status::internal(e.to_string()))?,
            term: metrics.current_term,
        }))
    }
}

fn watch_error(error: StoreError) -> WatchError {
    match error {
        StoreError::Compacted {
            requested,
            compacted,
        } => WatchError::Compacted {
            requested,
            compacted,
        },
        other => WatchError::Failed(other.to_string()),
    }
}

type WatchStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<RaftMessage, Status>> + Send>>;

type SnapshotStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Store for StoreService {
    type WatchStream = WatchStream;
    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        // Written to a temporary file from one read transaction, then
        // streamed from it: consistent, and never whole in memory.
        let store = self.node.store();
        let dir = tempfile::tempdir().map_err(|e| Status::internal(format!("temp dir: {e}")))?;
        let path = dir.path().join("save.snap");
        let file_path = path.clone();
        tokio::task::spawn_blocking(move || store.save_snapshot(&file_path))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<SnapshotChunk, Status>>(4);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let _dir = dir; // removed once the stream is done
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                match file.read(&mut buffer).await {
                    Ok(0) => return,
                    Ok(n) => {
                        let chunk = SnapshotChunk {
                            data: buffer[..n].to_vec(),
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn watch(&self, request: Request<RaftMessage>) -> Result<Response<WatchStream>, Status> {
        let query: WatchQuery = decode(request.get_ref())?;
        let first = self.node.watch(query.prefix, query.start);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RaftMessage, Status>>(16);
        tokio::spawn(async move {
            let mut watcher = match first {
                Ok(watcher) => watcher,
                Err(error) => {
                    let batch: WatchBatch = Err(watch_error(error));
                    let _ = tx.send(encode(&batch)).await;
                    return;
                }
            };
            loop {
                let batch: WatchBatch = watcher.next_batch().await.map_err(watch_error);
                let ended = batch.as_ref().map_or(true, Vec::is_empty);
                if tx.send(encode(&batch)).await.is_err() || ended {
                    return; // client gone, or the watch ended
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn keep_alive(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let lease: crate::store::types::LeaseId = decode(request.get_ref())?;
        let reply: KeepAliveReply = self.node.keep_alive(lease);
        Ok(Response::new(encode(&reply)?))
    }

    async fn read_index(
        &self,
        _request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let reply: Result<Option<u64>, WriteError> = self.node.read_index().await;
        Ok(Response::new(encode(&reply)?))
    }

    async fn write(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let store_request: StoreRequest = decode(request.get_ref())?;
        let reply: WriteReply = self.node.write(store_request).await;
        Ok(Response::new(encode(&reply)?))
    }

    async fn range(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let query: RangeQuery = decode(request.get_ref())?;
        let reply: RangeReply = async {
            if query.linearizable {
                // Served here, leader or follower, once this replica has
                // applied everything committed before the read.
                self.node.read_barrier().await?;
            }
            self.node
                .store()
                .range(&query.prefix, query.start.as_deref(), query.limit)
                .map_err(|e| WriteError::Stopped(e.to_string()))
        }
        .await;
        Ok(Response::new(encode(&reply)?))
    }
}
