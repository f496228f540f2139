//! A client of the store's replicas: finds the leader, follows `NotLeader`
//! hints, fails over when a replica dies, and retries a write with the same
//! request id (the state machine answers a retry from its record, so a
//! write is applied once even when an acknowledgement was lost).

use std::time::{Duration, Instant};

use thiserror::Error;
use tonic::transport::Channel;

use super::node::WriteError;
use super::peer_tls::PeerTls;
use super::service::RangeQuery;
use super::transport::proto::RaftMessage;
use super::transport::proto::store_client::StoreClient as GrpcStoreClient;
use crate::store::types::{RangeResult, Request, Response};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no replica acknowledged within {timeout:?}; last error: {last}")]
    Unavailable { timeout: Duration, last: String },
    #[error(transparent)]
    Refused(WriteError),
}

#[derive(Clone)]
pub struct StoreClient {
    replicas: Vec<(String, GrpcStoreClient<Channel>)>,
    /// Index of the replica to try first: the last one that answered.
    preferred: usize,
    timeout: Duration,
}

impl StoreClient {
    /// A client of the replicas at `addrs` (`host:port`), giving up on a
    /// call after `timeout`.
    pub fn new(addrs: &[String], tls: &PeerTls, timeout: Duration) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Unavailable {
                timeout,
                last: "no replica address given".into(),
            });
        }
        let replicas = addrs
            .iter()
            .map(|addr| {
                tls.endpoint(addr)
                    .map(|endpoint| {
                        let endpoint = endpoint.connect_timeout(Duration::from_millis(500));
                        (addr.clone(), GrpcStoreClient::new(endpoint.connect_lazy()))
                    })
                    .map_err(|e| ClientError::Unavailable {
                        timeout,
                        last: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            replicas,
            preferred: 0,
            timeout,
        })
    }

    /// The replica that answered last (after a write: the leader).
    pub fn last_answered(&self) -> &str {
        &self.replicas[self.preferred].0
    }

    pub async fn write(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.rpc(request, |mut client, message| async move {
            client.write(message).await
        })
        .await
    }

    /// Refreshes a lease at the leader; returns its TTL in seconds.
    pub async fn keep_alive(
        &mut self,
        lease: crate::store::types::LeaseId,
    ) -> Result<i64, ClientError> {
        self.rpc(&lease, |mut client, message| async move {
            client.keep_alive(message).await
        })
        .await
    }

    pub async fn range(&mut self, query: &RangeQuery) -> Result<RangeResult, ClientError> {
        self.rpc(query, |mut client, message| async move {
            client.range(message).await
        })
        .await
    }

    /// Encodes `query`, sends it with `send`, decodes the replica's
    /// `Result<T, WriteError>`.
    async fn rpc<Q, T, F, Fut>(&mut self, query: &Q, send: F) -> Result<T, ClientError>
    where
        Q: serde::Serialize,
        T: serde::de::DeserializeOwned,
        F: Fn(GrpcStoreClient<Channel>, RaftMessage) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let data = postcard::to_stdvec(query).map_err(|e| ClientError::Unavailable {
            timeout: self.timeout,
            last: e.to_string(),
        })?;
        self.call(send, data, |bytes| {
            postcard::from_bytes::<Result<T, WriteError>>(bytes).map_err(|e| e.to_string())
        })
        .await
    }

    /// Tries replicas, preferred first, until one answers or time runs out.
    async fn call<T, F, Fut, D>(
        &mut self,
        send: F,
        data: Vec<u8>,
        decode: D,
    ) -> Result<T, ClientError>
    where
        F: Fn(GrpcStoreClient<Channel>, RaftMessage) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
        D: Fn(&[u8]) -> Result<Result<T, WriteError>, String>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut last = String::from("no replica tried");
        // The last answer a replica gave: more telling than a later timeout.
        let mut said: Option<String> = None;
        let mut attempt = 0usize;
        while Instant::now() < deadline {
            let index = (self.preferred + attempt) % self.replicas.len();
            let (addr, client) = &self.replicas[index];
            // One unresponsive replica (stopped, partitioned) must not use
            // up the whole budget: bound each attempt.
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .min((self.timeout / 3).max(Duration::from_millis(500)));
            let reply = tokio::time::timeout(
                remaining,
                send(client.clone(), RaftMessage { data: data.clone() }),
            )
            .await;
            match reply {
                Err(_) => last = format!("{addr}: timed out"),
                Ok(Err(status)) => last = format!("{addr}: {}", status.message()),
                Ok(Ok(reply)) => match decode(&reply.into_inner().data) {
                    Err(e) => last = format!("{addr}: {e}"),
                    Ok(Ok(value)) => {
                        self.preferred = index;
                        return Ok(value);
                    }
                    Ok(Err(WriteError::Rejected(reason))) => {
                        return Err(ClientError::Refused(WriteError::Rejected(reason)));
                    }
                    Ok(Err(WriteError::NotLeader { leader })) => {
                        last = format!("{addr}: not the leader");
                        if let Some((_, node)) = leader
                            && let Some(position) =
                                self.replicas.iter().position(|(a, _)| *a == node.addr)
                        {
                            self.preferred = position;
                            attempt = 0;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(Err(other)) => {
                        last = format!("{addr}: {other}");
                        said = Some(last.clone());
                    }
                },
            }
            attempt += 1;
            if attempt.is_multiple_of(self.replicas.len()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Err(ClientError::Unavailable {
            timeout: self.timeout,
            last: match said {
                Some(said) if said != last => format!("{said}; last try: {last}"),
                _ => last,
            },
        })
    }
}

/// A Membership client of the replica at `addr` (`host:port`); a replica
/// that cannot be reached is `Unavailable`, like one that answers so.
pub async fn membership(
    addr: &str,
    tls: &PeerTls,
) -> Result<super::transport::proto::membership_client::MembershipClient<Channel>, tonic::Status> {
    let endpoint = tls
        .endpoint(addr)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| {
            let why = orch_core::api::error_chain(&e);
            if super::peer_tls::untrusted_certificate(&why) {
                tonic::Status::unauthenticated(format!(
                    "{addr} and this replica do not share a cluster CA (pki/ca.crt): {why}"
                ))
            } else if super::peer_tls::wrong_name(&why) {
                tonic::Status::unauthenticated(format!(
                    "{addr}'s certificate (its pki/peer.crt) does not name the address it was called at; call it by an address its --listen covers: {why}"
                ))
            } else {
                tonic::Status::unavailable(format!("connecting to {addr}: {why}"))
            }
        })?;
    Ok(super::transport::proto::membership_client::MembershipClient::new(channel))
}

/// The replica at `addr`'s own view of the cluster: its id, the cluster
/// id, leader, voters, learners and members.
pub async fn replica_status(
    addr: &str,
    tls: &PeerTls,
) -> Result<super::transport::proto::StatusResponse, tonic::Status> {
    Ok(membership(addr, tls)
        .await?
        .status(super::transport::proto::StatusRequest {})
        .await?
        .into_inner())
}
