//! One control-plane replica's store: the Raft instance over the redb log
//! and state machine, and the write path in front of it.
//!
//! Writes go through a batcher: requests that arrive while a Raft write is
//! being committed are grouped into the next log entry, so many concurrent
//! clients share one fsync of the leader's log instead of paying one each.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::ClientWriteError;
use openraft::impls::OneshotResponder;
use openraft::raft::responder::Responder;
use openraft::{BasicNode, Config, Raft};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use super::lessor::Lessor;
use super::log_store::LogStore;
use super::peer_tls::PeerTls;
use super::state_machine::{SharedStore, StateMachine};
use super::transport::GrpcNetworkFactory;
use super::{NodeId, TypeConfig};
use crate::store::identity::{ClusterId, Identity};
use crate::store::types::{MAX_REQUEST_BYTES, Request, Response, Revision, proposable_size};
use crate::store::{MvccStore, StoreError};

/// Most requests in one log entry.
const MAX_BATCH: usize = 1024;
/// Most encoded request bytes in one log entry. Without it, 64 clients
/// writing objects near the value limit made one ~96 MiB entry, larger
/// than a replication message may be: no follower could ever take it, and
/// every write behind it failed for want of a quorum. Small enough that an
/// append carrying one entry finishes within the heartbeat interval (see
/// `REPLICATION_BYTES`).
pub const MAX_ENTRY_BYTES: usize = 2 << 20;
const _: () = assert!(MAX_REQUEST_BYTES <= MAX_ENTRY_BYTES);

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("raft: {0}")]
    Fatal(#[from] openraft::error::Fatal<NodeId>),
}

/// Why a write was not acknowledged. Apart from `Rejected`, the write may or
/// may not have been committed: retry with the same request id.
#[derive(Clone, Debug, Error, serde::Serialize, serde::Deserialize)]
pub enum WriteError {
    #[error("not the leader; the leader is {}", leader.as_ref().map_or("unknown (election in progress)".to_string(), |(id, node)| format!("node {id} at {}", node.addr)))]
    NotLeader { leader: Option<(NodeId, BasicNode)> },
    #[error(
        "no quorum: the write was not committed within {0:?} (a majority of replicas is unreachable)"
    )]
    NoQuorum(Duration),
    #[error("request refused before replication: {0}")]
    Rejected(String),
    #[error("replica is shutting down: {0}")]
    Stopped(String),
}

/// How a replica behaves, beyond Raft's own configuration.
#[derive(Clone, Copy, Debug)]
pub struct NodeOptions {
    /// How long a write waits for a quorum before failing with "no quorum".
    pub write_timeout: Duration,
    /// Revisions of history kept for watchers; older ones are compacted
    /// away by the leader. 0 keeps everything.
    pub compaction_retention: Revision,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            write_timeout: Duration::from_secs(5),
            compaction_retention: 10_000,
        }
    }
}

/// Read-index fetches, numbered as they start, and the last one's result.
#[derive(Default)]
struct ReadIndexes {
    started: std::sync::atomic::AtomicU64,
    last: tokio::sync::Mutex<Option<(u64, Option<u64>)>>,
}

type StoreGrpc = super::transport::proto::store_client::StoreClient<tonic::transport::Channel>;

/// A request waiting for the batcher, with its encoded size.
struct Pending {
    request: Request,
    bytes: usize,
    reply: oneshot::Sender<Result<Response, WriteError>>,
}

/// A running replica.
pub struct RaftNode {
    pub id: NodeId,
    /// Store clients of other replicas (the leader's, for read indexes),
    /// by address.
    peers: std::sync::Mutex<std::collections::HashMap<String, StoreGrpc>>,
    write_timeout: Duration,
    read_index: ReadIndexes,
    /// The cluster this replica belongs to (its data directory's identity).
    pub cluster: ClusterId,
    /// How this replica calls other replicas (mutual TLS, cluster CA).
    pub tls: PeerTls,
    pub raft: Raft<TypeConfig>,
    store: SharedStore,
    writes: mpsc::Sender<Pending>,
    lessor: Arc<Lessor>,
}

impl RaftNode {
    /// Opens the replica kept in `data_dir` (`log.redb`, `state/`) and starts
    /// its Raft as `identity.node` of `identity.cluster`.
    pub async fn open(
        identity: Identity,
        data_dir: &Path,
        config: Config,
        options: NodeOptions,
        tls: PeerTls,
    ) -> Result<Self, NodeError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        // Both files checked (and repaired after a crash) before either is
        // opened for writing: a damaged one leaves the other untouched too.
        let log_path = data_dir.join("log.redb");
        crate::store::files::prepare(&[
            &log_path,
            &StateMachine::state_file(&data_dir.join("state")),
        ])?;
        let log = LogStore::open(&log_path)?;
        let state_machine = StateMachine::open(&data_dir.join("state"))?;
        let store = state_machine.shared_store();
        let config = Arc::new(config.validate()?);
        let id = identity.node;
        let network = GrpcNetworkFactory::new(identity.cluster, tls.clone());
        let raft = Raft::new(id, config, network, log, state_machine).await?;
        let (writes, queue) = mpsc::channel(MAX_BATCH);
        tokio::spawn(run_batcher(raft.clone(), queue, options.write_timeout));
        tokio::spawn(super::compactor::run(
            raft.clone(),
            id,
            store.clone(),
            options.compaction_retention,
        ));
        let lessor = Arc::new(Lessor::default());
        tokio::spawn(super::lessor::run(
            lessor.clone(),
            raft.clone(),
            id,
            store.clone(),
        ));
        Ok(Self {
            id,
            peers: Default::default(),
            write_timeout: options.write_timeout,
            read_index: ReadIndexes::default(),
            cluster: identity.cluster,
            tls,
            raft,
            store,
            writes,
            lessor,
        })
    }

    /// The replica's state machine store, for local reads.
    pub fn store(&self) -> Arc<MvccStore> {
        self.store.current()
    }

    /// Refreshes a lease on the leader; returns its TTL in seconds.
    pub fn keep_alive(&self, lease: crate::store::types::LeaseId) -> Result<i64, WriteError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.id) {
            let leader = metrics.current_leader.and_then(|id| {
                metrics
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .map(|node| (id, node.clone()))
            });
            return Err(WriteError::NotLeader { leader });
        }
        self.lessor
            .keep_alive(lease, &self.store)
            .map(|ttl| ttl.as_secs() as i64)
            .ok_or_else(|| WriteError::Rejected(format!("lease {lease} not found")))
    }

    /// The leader, when this replica knows it: (id, address).
    fn leader(&self) -> Option<(NodeId, BasicNode)> {
        let metrics = self.raft.metrics().borrow().clone();
        let id = metrics.current_leader?;
        let node = metrics
            .membership_config
            .membership()
            .get_node(&id)?
            .clone();
        Some((id, node))
    }

    /// On the leader: confirms leadership with a quorum and returns the log
    /// index a linearizable read must see applied.
    pub async fn read_index(&self) -> Result<Option<u64>, WriteError> {
        match self.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map(|log_id| log_id.index)),
            Err(error) => match error.forward_to_leader() {
                Some(forward) => Err(WriteError::NotLeader {
                    leader: forward.leader_id.zip(forward.leader_node.clone()),
                }),
                None => Err(WriteError::NoQuorum(self.write_timeout)),
            },
        }
    }

    /// Returns once this replica may serve a linearizable read from its own
    /// state: it has applied everything committed before the call (the
    /// leader's read index, fetched from the leader on a follower).
    pub async fn read_barrier(&self) -> Result<(), WriteError> {
        let index = self.coalesced_read_index().await?;
        self.raft
            .wait(Some(self.write_timeout))
            .applied_index_at_least(index, "read barrier")
            .await
            .map(|_| ())
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => {
                    WriteError::NoQuorum(self.write_timeout)
                }
                openraft::metrics::WaitError::ShuttingDown => {
                    WriteError::Stopped("shutting down".into())
                }
            })
    }

    /// A read index obtained after this call began. Concurrent readers
    /// share one: a fetch (a heartbeat round to a quorum, on the leader)
    /// that started after a reader arrived answers for it too, so a burst
    /// of reads costs one round, not one each.
    async fn coalesced_read_index(&self) -> Result<Option<u64>, WriteError> {
        use std::sync::atomic::Ordering;
        let arrived = self.read_index.started.load(Ordering::Acquire);
        let mut last = self.read_index.last.lock().await;
        if let Some((generation, index)) = *last
            && generation > arrived
        {
            return Ok(index);
        }
        let generation = self.read_index.started.fetch_add(1, Ordering::AcqRel) + 1;
        let index = match self.read_index().await {
            Ok(index) => index,
            Err(WriteError::NotLeader { .. }) => self.leader_read_index().await?,
            Err(other) => return Err(other),
        };
        *last = Some((generation, index));
        Ok(index)
    }

    async fn leader_read_index(&self) -> Result<Option<u64>, WriteError> {
        let (_, leader) = self
            .leader()
            .ok_or(WriteError::NotLeader { leader: None })?;
        let mut client = {
            let mut peers = match self.peers.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            match peers.get(&leader.addr) {
                Some(client) => client.clone(),
                None => {
                    let endpoint = self
                        .tls
                        .endpoint(&leader.addr)
                        .map_err(|e| WriteError::Stopped(format!("leader address: {e}")))?;
                    let client = StoreGrpc::new(endpoint.connect_lazy());
                    peers.insert(leader.addr.clone(), client.clone());
                    client
                }
            }
        };
        let data = postcard::to_stdvec(&()).map_err(|e| WriteError::Stopped(e.to_string()))?;
        let ask = client.read_index(super::transport::proto::RaftMessage { data });
        let reply = tokio::time::timeout(self.write_timeout, ask)
            .await
            .map_err(|_| WriteError::NoQuorum(self.write_timeout))?
            .map_err(|status| {
                WriteError::Stopped(format!(
                    "asking the leader for a read index: {}",
                    status.message()
                ))
            })?;
        postcard::from_bytes::<Result<Option<u64>, WriteError>>(&reply.into_inner().data)
            .map_err(|e| WriteError::Stopped(format!("decoding a read index: {e}")))?
    }

    /// Watches `prefix` from revision `start` (0: from now).
    pub fn watch(
        &self,
        prefix: Vec<u8>,
        start: crate::store::types::Revision,
    ) -> Result<crate::store::watch::Watcher, StoreError> {
        crate::store::watch::Watcher::new(self.store.clone(), prefix, start)
    }

    /// Submits one request; it is committed in a batch with whatever else is
    /// waiting. Oversized values and requests are refused here, before they
    /// reach Raft.
    pub async fn write(&self, request: Request) -> Result<Response, WriteError> {
        let bytes = proposable_size(&request).map_err(WriteError::Rejected)?;
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Pending {
                request,
                bytes,
                reply,
            })
            .await
            .map_err(|_| WriteError::Stopped("write queue closed".into()))?;
        answer
            .await
            .map_err(|_| WriteError::Stopped("write dropped".into()))?
    }
}

/// Takes whatever is queued (up to `MAX_BATCH` requests, `MAX_ENTRY_BYTES`)
/// as one log entry, and commits one entry at a time: everything that
/// arrives meanwhile joins the next, and fewer, larger entries mean fewer
/// state-machine commits (each rewrites every B-tree page it touches).
/// `cargo xtask bench store`, 64 clients, one replica, on the 2-core dev
/// machine: one entry at a time ~16k puts/s, four entries in flight ~11k.
async fn run_batcher(
    raft: Raft<TypeConfig>,
    mut queue: mpsc::Receiver<Pending>,
    write_timeout: Duration,
) {
    let mut next: Option<Committing> = None;
    // A request that did not fit in the last entry: the next one's first.
    let mut held: Option<Pending> = None;
    loop {
        let committing = match next.take() {
            Some(committing) => committing,
            None => {
                let first = match held.take() {
                    Some(first) => first,
                    None => match queue.recv().await {
                        Some(first) => first,
                        None => return,
                    },
                };
                let batch;
                (batch, held) = take_batch(first, &mut queue);
                Committing::submit(&raft, batch, write_timeout).await
            }
        };
        let (outcome, replies) = committing.finish().await;
        // The next entry goes to Raft before these clients are answered:
        // each answer wakes a gRPC handler task, and work queued after them
        // waits until they have all run, while Raft sits idle (~0.7 ms of a
        // ~5 ms commit with 64 clients on 3 replicas, when the next entry
        // was started from a task woken after the answers).
        if let Some(first) = held.take().or_else(|| queue.try_recv().ok()) {
            let batch;
            (batch, held) = take_batch(first, &mut queue);
            next = Some(Committing::submit(&raft, batch, write_timeout).await);
        }
        answer(replies, outcome);
    }
}

/// `first` and whatever else is queued, up to `MAX_BATCH` requests and
/// `MAX_ENTRY_BYTES`; also the request taken from the queue that did not
/// fit, if one did not.
fn take_batch(
    first: Pending,
    queue: &mut mpsc::Receiver<Pending>,
) -> (Vec<Pending>, Option<Pending>) {
    let mut bytes = first.bytes;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        let Ok(pending) = queue.try_recv() else {
            break;
        };
        if bytes + pending.bytes > MAX_ENTRY_BYTES {
            return (batch, Some(pending));
        }
        bytes += pending.bytes;
        batch.push(pending);
    }
    (batch, None)
}

type Replies = Vec<oneshot::Sender<Result<Response, WriteError>>>;

/// Where Raft answers a submitted entry: with its responses once applied.
type Applied = <OneshotResponder<TypeConfig> as Responder<TypeConfig>>::Receiver;

/// One log entry handed to Raft, and the clients waiting for it.
struct Committing {
    submitted: Result<Applied, WriteError>,
    replies: Replies,
    started: Instant,
    timeout: Duration,
}

impl Committing {
    /// Hands the batch to the Raft core, which queues it at once; does not
    /// wait for its commit.
    async fn submit(raft: &Raft<TypeConfig>, batch: Vec<Pending>, timeout: Duration) -> Self {
        let (requests, replies): (Vec<Request>, Replies) = batch
            .into_iter()
            .map(|pending| (pending.request, pending.reply))
            .unzip();
        let started = Instant::now();
        let submitted = raft
            .client_write_ff(requests)
            .await
            .map_err(|fatal| WriteError::Stopped(fatal.to_string()));
        Self {
            submitted,
            replies,
            started,
            timeout,
        }
    }

    /// Waits until the entry is applied, at most the write timeout from its
    /// submission.
    async fn finish(self) -> (Result<Vec<Response>, WriteError>, Replies) {
        let outcome = match self.submitted {
            Err(error) => Err(error),
            Ok(applied) => {
                let left = self.timeout.saturating_sub(self.started.elapsed());
                let result = tokio::time::timeout(left, applied).await;
                crate::metrics::global().observe_commit(self.started.elapsed());
                match result {
                    Err(_) => Err(WriteError::NoQuorum(self.timeout)),
                    Ok(Err(_)) => Err(WriteError::Stopped("raft dropped the write".into())),
                    Ok(Ok(Ok(written))) => Ok(written.data),
                    Ok(Ok(Err(ClientWriteError::ForwardToLeader(forward)))) => {
                        Err(WriteError::NotLeader {
                            leader: forward.leader_id.zip(forward.leader_node),
                        })
                    }
                    Ok(Ok(Err(other))) => Err(WriteError::Stopped(other.to_string())),
                }
            }
        };
        (outcome, self.replies)
    }
}

fn answer(replies: Replies, outcome: Result<Vec<Response>, WriteError>) {
    match outcome {
        Ok(responses) => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::{Command, Op, RequestId, Txn, encoded_bytes};

    fn pending(id: u128, value_bytes: usize) -> Pending {
        let request = Request {
            id: RequestId(id),
            command: Command::Txn(Txn {
                success: vec![Op::Put {
                    key: format!("/k/{id}").into_bytes(),
                    value: vec![7; value_bytes],
                    lease: None,
                }],
                ..Txn::default()
            }),
        };
        Pending {
            bytes: encoded_bytes(&request),
            request,
            reply: oneshot::channel().0,
        }
    }

    fn ids(batch: &[Pending]) -> Vec<u128> {
        batch.iter().map(|p| p.request.id.0).collect()
    }

    #[test]
    fn a_batch_stops_before_the_request_that_would_pass_the_entry_limit() {
        let (send, mut queue) = mpsc::channel(MAX_BATCH);
        let big = crate::store::types::MAX_VALUE_BYTES;
        for id in 2..=4 {
            send.try_send(pending(id, big)).expect("queued");
        }
        // A small request and one value at the limit fit in 2 MiB, a
        // second value at the limit does not.
        let (batch, held) = take_batch(pending(1, 1024), &mut queue);
        assert_eq!(ids(&batch), [1, 2]);
        let held = held.expect("the request that did not fit is kept");
        assert_eq!(held.request.id.0, 3);
        let (batch, held) = take_batch(held, &mut queue);
        assert_eq!(ids(&batch), [3]);
        let (batch, held) = take_batch(held.expect("kept again"), &mut queue);
        assert_eq!(ids(&batch), [4]);
        assert!(held.is_none());
        assert!(batch.iter().map(|p| p.bytes).sum::<usize>() <= MAX_ENTRY_BYTES);
    }

    #[test]
    fn a_batch_of_small_requests_stops_at_the_request_count() {
        let (send, mut queue) = mpsc::channel(2 * MAX_BATCH);
        for id in 1..=MAX_BATCH as u128 + 5 {
            send.try_send(pending(id, 16)).expect("queued");
        }
        let first = queue.try_recv().expect("first");
        let (batch, held) = take_batch(first, &mut queue);
        assert_eq!(batch.len(), MAX_BATCH);
        assert!(held.is_none());
        assert_eq!(queue.len(), 5);
    }

    #[test]
    fn a_request_over_the_request_limit_is_refused_with_its_size() {
        let many = Request {
            id: RequestId(1),
            command: Command::Txn(Txn {
                success: (0..3)
                    .map(|i| Op::Put {
                        key: format!("/k/{i}").into_bytes(),
                        value: vec![1; 1 << 20],
                        lease: None,
                    })
                    .collect(),
                ..Txn::default()
            }),
        };
        let reason = proposable_size(&many).expect_err("3 MiB refused");
        assert!(reason.contains("exceeds the limit of 2097152"), "{reason}");
        let one = pending(2, crate::store::types::MAX_VALUE_BYTES).request;
        assert_eq!(proposable_size(&one), Ok(encoded_bytes(&one)));
    }
}
