//! Raft RPCs between replicas over tonic gRPC: the server side hands
//! requests to the local [`Raft`], the client side is openraft's network.
//! Snapshots stream from file to file in chunks, never whole in memory.

use std::future::Future;
use std::pin::Pin;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, Snapshot, SnapshotMeta, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;

use super::peer_tls::PeerTls;
use orch_core::api::identity::OrganizationAuthorizer;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use super::{NodeId, TypeConfig};
use crate::store::identity::ClusterId;

#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("orch.raft.v1");
}

use proto::raft_transport_client::RaftTransportClient;
use proto::raft_transport_server::{RaftTransport, RaftTransportServer};
use proto::{RaftMessage, SnapshotChunk};

/// Snapshot chunk size on the wire.
const CHUNK_BYTES: usize = 1 << 20;

/// Largest Raft message either side sends or takes. An append carries
/// entries up to `REPLICATION_BYTES` in all, or a single larger one of at
/// most `MAX_ENTRY_BYTES`, so every append fits with room to spare.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
const _: () = assert!(
    super::log_store::REPLICATION_BYTES < MAX_MESSAGE_BYTES
        && super::node::MAX_ENTRY_BYTES < MAX_MESSAGE_BYTES
);

/// The gRPC metadata key every Raft RPC carries the sender's cluster id in.
const CLUSTER_HEADER: &str = "orch-cluster-id";

/// How often a replica logs that another cluster keeps calling it.
const MISMATCH_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    postcard::to_stdvec(value).map_err(|e| Status::internal(format!("encoding: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(bytes).map_err(|e| Status::invalid_argument(format!("decoding: {e}")))
}

/// The server half: serves one replica's Raft to its peers of the same
/// cluster, and refuses everyone else.
pub struct TransportService {
    raft: Raft<TypeConfig>,
    cluster: ClusterId,
    last_mismatch_log: std::sync::Mutex<Option<std::time::Instant>>,
}

impl TransportService {
    /// The service, open to replicas only.
    pub fn server(
        raft: Raft<TypeConfig>,
        cluster: ClusterId,
    ) -> InterceptedService<RaftTransportServer<Self>, OrganizationAuthorizer> {
        let server = RaftTransportServer::new(Self {
            raft,
            cluster,
            last_mismatch_log: std::sync::Mutex::new(None),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        InterceptedService::new(server, super::peer_auth::replicas("Raft"))
    }

    /// Refuses a Raft RPC from a replica of another cluster (a data
    /// directory started in the wrong place, an address reused): its log
    /// must never reach this replica's.
    fn check_cluster<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let sent = request
            .metadata()
            .get(CLUSTER_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("(none)");
        if sent == self.cluster.to_string() {
            return Ok(());
        }
        let message = format!(
            "cluster id mismatch: this replica belongs to cluster {}, the request came from cluster {sent}; refused",
            self.cluster
        );
        let mut last = match self.last_mismatch_log.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last.is_none_or(|at| at.elapsed() >= MISMATCH_LOG_INTERVAL) {
            *last = Some(std::time::Instant::now());
            tracing::error!(remote = ?request.remote_addr(), "{message}");
        }
        Err(Status::failed_precondition(message))
    }
}

/// Stamps an outgoing Raft RPC with this replica's cluster id.
fn stamped<T>(message: T, cluster: &ClusterId) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = cluster.to_string().parse() {
        request.metadata_mut().insert(CLUSTER_HEADER, value);
    }
    request
}

type SnapshotHeader = (Vote<NodeId>, SnapshotMeta<NodeId, BasicNode>);

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_cluster(&request)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&request.into_inner().data)?;
        let result = self.raft.append_entries(rpc).await;
        Ok(Response::new(RaftMessage {
            data: encode(&result)?,
        }))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_cluster(&request)?;
        let rpc: VoteRequest<NodeId> = decode(&request.into_inner().data)?;
        let result = self.raft.vote(rpc).await;
        Ok(Response::new(RaftMessage {
            data: encode(&result)?,
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_cluster(&request)?;
        let mut chunks = request.into_inner();
        let header = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let (vote, meta): SnapshotHeader = decode(&header.data)?;
        let mut file = self
            .raft
            .begin_receiving_snapshot()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        while let Some(chunk) = chunks.message().await? {
            file.write_all(&chunk.data)
                .await
                .map_err(|e| Status::internal(format!("writing snapshot: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| Status::internal(format!("writing snapshot: {e}")))?;
        let result = self
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: file,
                },
            )
            .await;
        Ok(Response::new(RaftMessage {
            data: encode(&result)?,
        }))
    }
}

/// The client half: openraft asks it for a connection to each peer.
///
/// openraft 0.9 asks for a new client for every linearizable read's
/// heartbeat round (`get_read_log_id`) and every election, not only per
/// replication stream, so channels are kept per address: a fresh channel
/// would be a TCP connection and a TLS handshake per read.
#[derive(Clone)]
pub struct GrpcNetworkFactory {
    cluster: ClusterId,
    tls: PeerTls,
    channels: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Channel>>>,
}

impl GrpcNetworkFactory {
    pub fn new(cluster: ClusterId, tls: PeerTls) -> Self {
        Self {
            cluster,
            tls,
            channels: Default::default(),
        }
    }

    /// The shared channel to `addr` (connected lazily: an unreachable peer
    /// fails RPCs, not construction; a broken connection is re-dialled by
    /// the channel itself).
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = self
            .tls
            .endpoint(addr)
            .map_err(|e| e.to_string())?
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

fn transport_client(channel: Channel) -> RaftTransportClient<Channel> {
    RaftTransportClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub struct GrpcNetwork {
    target: NodeId,
    addr: String,
    cluster: ClusterId,
    tls: PeerTls,
    client: Result<RaftTransportClient<Channel>, String>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        let client = self
            .channel(&node.addr)
            .map(transport_client)
            .map_err(|e| format!("bad address {:?} of node {target}: {e}", node.addr));
        GrpcNetwork {
            target,
            addr: node.addr.clone(),
            cluster: self.cluster,
            tls: self.tls.clone(),
            client,
        }
    }
}

type RpcResult<T> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId>>>;

/// A peer that is down or refusing connections is `Unreachable` (openraft
/// backs off); anything else is a network error to retry.
fn status_to_rpc_error(status: &Status) -> RPCError<NodeId, BasicNode, RaftError<NodeId>> {
    match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(status)),
        _ => RPCError::Network(NetworkError::new(status)),
    }
}

impl GrpcNetwork {
    fn client(&self) -> Result<RaftTransportClient<Channel>, NetworkError> {
        self.client
            .clone()
            .map_err(|e| NetworkError::new(&std::io::Error::other(e)))
    }

    async fn call<Req, Resp, F, Fut>(
        &mut self,
        rpc: &Req,
        option: &RPCOption,
        send: F,
    ) -> RpcResult<Resp>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftTransportClient<Channel>, Request<RaftMessage>) -> Fut,
        Fut: Future<Output = Result<Response<RaftMessage>, Status>>,
    {
        let client = self.client()?;
        let data = encode(rpc).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        let reply = tokio::time::timeout(
            option.hard_ttl(),
            send(client, stamped(RaftMessage { data }, &self.cluster)),
        )
        .await
        .map_err(|elapsed| RPCError::Unreachable(Unreachable::new(&elapsed)))?
        .map_err(|status| status_to_rpc_error(&status))?;
        let result: Result<Resp, RaftError<NodeId>> = decode(&reply.into_inner().data)
            .map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(&rpc, &option, |mut client, message| async move {
            client.append_entries(message).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(&rpc, &option, |mut client, message| async move {
            client.vote(message).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let network_error = |e: &dyn std::error::Error| {
            StreamingError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
        };
        // A connection of its own: megabytes of snapshot must not queue
        // heartbeats and appends behind them on the shared one.
        let mut client = self
            .tls
            .endpoint(&self.addr)
            .map(|endpoint| transport_client(endpoint.connect_lazy()))
            .map_err(|e| network_error(&e))?;
        let cluster = self.cluster;
        let header = encode(&(vote, snapshot.meta.clone())).map_err(|e| network_error(&e))?;
        let mut file = *snapshot.snapshot;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        // Feed the stream from the file while the RPC runs.
        let feeder = tokio::spawn(async move {
            if tx.send(SnapshotChunk { data: header }).await.is_err() {
                return Ok(());
            }
            let mut buffer = vec![0u8; CHUNK_BYTES];
            loop {
                let n = file.read(&mut buffer).await?;
                if n == 0 {
                    return Ok(());
                }
                if tx
                    .send(SnapshotChunk {
                        data: buffer[..n].to_vec(),
                    })
                    .await
                    .is_err()
                {
                    return Ok::<(), std::io::Error>(());
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let send: Pin<Box<dyn Future<Output = Result<Response<RaftMessage>, Status>> + Send>> =
            Box::pin(async move { client.install_snapshot(stamped(stream, &cluster)).await });
        let reply = tokio::select! {
            reply = send => reply,
            closed = cancel => {
                feeder.abort();
                return Err(StreamingError::Closed(closed));
            }
        };
        match feeder.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(network_error(&e)),
            Err(e) => return Err(network_error(&e)),
        }
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable => StreamingError::Unreachable(Unreachable::new(&status)),
            _ => network_error(&status),
        })?;
        let result: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            decode(&reply.into_inner().data).map_err(|s| network_error(&s))?;
        result.map_err(|fatal| {
            StreamingError::Network(NetworkError::new(&std::io::Error::other(format!(
                "node {}: {fatal}",
                self.target
            ))))
        })
    }
}

/// The connections a replica's gRPC server accepts, with Nagle's algorithm
/// off: Raft and store RPCs are small request/response exchanges, and Nagle
/// waiting on the peer's delayed ACK adds ~40 ms to each. (tonic sets
/// TCP_NODELAY only on listeners it binds itself.)
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.and_then(|stream| {
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    })
}
