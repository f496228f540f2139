//! The typed API client: objects in, objects out, over every control-plane
//! replica. A replica that cannot be reached (down, restarting) is skipped
//! for the next one, so callers see a failover as, at most, a retry.

use std::time::{Duration, Instant};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::Endpoint;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

use super::ApiError;
use super::config::ClientConfig;
use super::proto;
use super::proto::api_client::ApiClient as GrpcClient;
use crate::object::{Kind, Object};

/// How a list or watch narrows what it returns.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub label_selector: String,
    pub field_selector: String,
    pub limit: u64,
    pub continue_token: String,
}

/// One page of a list.
#[derive(Clone, Debug)]
pub struct ObjectList {
    pub items: Vec<Object>,
    pub resource_version: String,
    pub continue_token: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEventType {
    Added,
    Modified,
    Deleted,
    Bookmark,
}

/// One change seen by a watch. For a bookmark, `resource_version` is the
/// point reached and `object` is None.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub event_type: WatchEventType,
    pub object: Option<Object>,
    pub resource_version: String,
}

/// Whether `status` says the replica could not be reached, or went away
/// in the middle of the call (its connection broke: tonic reports
/// "transport error" as Unknown, and a call still queued on a connection
/// that closed as hyper's Cancelled "operation was canceled"): then
/// another replica is tried. A write the dead replica may have applied is
/// retried like any lost reply; creates answer AlreadyExists then, updates
/// and patches are applied again.
fn unreachable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        || (status.code() == tonic::Code::Unknown && status.message().contains("transport error"))
        || (status.code() == tonic::Code::Cancelled
            && status.message().contains("operation was canceled"))
}

/// How calls reach an API server: a TLS channel to a replica, or the API
/// service of this very process called in memory (the controller manager
/// and its own replica: no TLS, no HTTP/2 framing, no socket).
type Transport = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, TransportError>;

/// Why a transport failed (a connection, or nothing: the in-process one
/// cannot). A type of its own, as tonic's client needs `Into<StdError>` to
/// hold for every lifetime, which a bare boxed error does not give.
#[derive(Debug)]
pub struct TransportError(BoxError);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The wrapped error itself: tonic looks down this chain for what
        // it maps to a status (a refused connection is Unavailable).
        Some(self.0.as_ref())
    }
}

/// What can carry the API's calls: a TLS channel, or the API server's own
/// service.
pub trait Carrier:
    Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Carrier for S where
    S: Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

fn transport<S: Carrier>(service: S) -> Transport {
    BoxCloneSyncService::new(service.map_err(|error| TransportError(error.into())))
}

#[derive(Clone, Copy)]
enum ObjectWrite {
    Create,
    Update,
    UpdateStatus,
}

#[derive(Clone)]
pub struct ApiClient {
    replicas: Vec<(String, GrpcClient<Transport>)>,
    preferred: usize,
    timeout: Duration,
    /// `Bearer <token>`, sent with every call.
    token: Option<tonic::metadata::AsciiMetadataValue>,
}

fn decode(kind: Kind, bytes: &[u8]) -> Result<Object, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    kind.deserialize(&mut deserializer)
        .map_err(|e| ApiError::Internal(format!("decoding a {kind} from the server: {e}")))
}

fn encode(object: &Object) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(object).map_err(|e| ApiError::Internal(format!("encoding: {e}")))
}

fn namespace_of(object: &Object) -> String {
    object.metadata().namespace.clone().unwrap_or_default()
}

mod nodes;

impl ApiClient {
    /// A client of the API servers of `config` (TLS, trusting the cluster
    /// CA, with the config's credentials), giving up on a call after
    /// `timeout`. Must be called inside a tokio runtime.
    pub fn new(config: &ClientConfig, timeout: Duration) -> Result<Self, ApiError> {
        if config.servers.is_empty() {
            return Err(ApiError::Invalid("no server address given".into()));
        }
        let token = match &config.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| ApiError::Invalid("token: not a valid header value".into()))?,
            ),
            None => None,
        };
        let replicas = config
            .servers
            .iter()
            .map(|addr| {
                let endpoint = Endpoint::from_shared(format!("https://{addr}"))
                    .and_then(|endpoint| endpoint.tls_config(config.tls()))
                    .map_err(|e| ApiError::Invalid(format!("server {addr:?}: {e}")))?;
                let channel = endpoint
                    .connect_timeout(Duration::from_millis(500))
                    .connect_lazy();
                let client = GrpcClient::new(transport(channel))
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20);
                Ok((addr.clone(), client))
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(Self {
            replicas,
            preferred: 0,
            timeout,
            token,
        })
    }

    /// A client of `service`, the API service of this very process, called
    /// in memory: what the controller manager uses to reach its own
    /// replica. Nothing is authenticated on this path (the caller is the
    /// server's own process), and nothing is encrypted (nothing leaves it).
    pub fn in_process<S: Carrier>(service: S, timeout: Duration) -> Self {
        // Each call on a task of its own, as the network server runs it: a
        // panic in a handler fails that call, not the caller's task, and a
        // caller that gives up does not cut the handler's write short.
        let isolated = tower::service_fn(move |request: http::Request<Body>| {
            let service = service.clone();
            async move {
                let call =
                    tokio::spawn(async move { service.oneshot(request).await.map_err(Into::into) });
                call.await.map_err(BoxError::from)?
            }
        });
        let client = GrpcClient::new(transport(isolated))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        Self {
            replicas: vec![("in-process".into(), client)],
            preferred: 0,
            timeout,
            token: None,
        }
    }

    /// A request carrying the bearer token, when there is one.
    fn request<M>(&self, message: M) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    /// Sends `message` with `send` to the preferred replica, then the
    /// others while they are unreachable, until one answers or the timeout
    /// passes. Each attempt carries the bearer token, when there is one.
    async fn call<M, T, F, Fut>(&mut self, message: M, send: F) -> Result<T, ApiError>
    where
        M: Clone,
        F: Fn(GrpcClient<Transport>, tonic::Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0usize;
        loop {
            let index = (self.preferred + attempt) % self.replicas.len();
            let (addr, client) = &self.replicas[index];
            let remaining = deadline.saturating_duration_since(Instant::now());
            let request = self.request(message.clone());
            let error = match tokio::time::timeout(remaining, send(client.clone(), request)).await {
                Ok(Ok(reply)) => {
                    self.preferred = index;
                    return Ok(reply.into_inner());
                }
                Ok(Err(status)) if !unreachable(&status) => {
                    return Err(ApiError::from_status(&status));
                }
                Ok(Err(status)) => format!("{addr}: {}", status.message()),
                Err(_) => format!("{addr}: timed out"),
            };
            attempt += 1;
            if Instant::now() >= deadline {
                return Err(ApiError::Unavailable(format!(
                    "no API server answered within {:?}; last: {error}",
                    self.timeout
                )));
            }
            if attempt.is_multiple_of(self.replicas.len()) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn object_call<M, F, Fut>(
        &mut self,
        kind: Kind,
        message: M,
        send: F,
    ) -> Result<Object, ApiError>
    where
        M: Clone,
        F: Fn(GrpcClient<Transport>, tonic::Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<proto::ObjectReply>, tonic::Status>>,
    {
        let reply = self.call(message, send).await?;
        decode(kind, &reply.object)
    }

    /// Sends a whole object: a create, an update or a status update.
    async fn write_object(
        &mut self,
        write: ObjectWrite,
        object: &Object,
        dry_run: bool,
    ) -> Result<Object, ApiError> {
        let request = proto::ObjectRequest {
            resource: object.kind().plural().into(),
            namespace: namespace_of(object),
            object: encode(object)?,
            dry_run,
        };
        self.object_call(object.kind(), request, |mut c, request| async move {
            match write {
                ObjectWrite::Create => c.create(request).await,
                ObjectWrite::Update => c.update(request).await,
                ObjectWrite::UpdateStatus => c.update_status(request).await,
            }
        })
        .await
    }

    pub async fn create(&mut self, object: &Object, dry_run: bool) -> Result<Object, ApiError> {
        self.write_object(ObjectWrite::Create, object, dry_run)
            .await
    }

    pub async fn get(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Object, ApiError> {
        let request = proto::GetRequest {
            resource: kind.plural().into(),
            namespace: namespace.unwrap_or_default().into(),
            name: name.into(),
        };
        self.object_call(kind, request, |mut c, request| async move {
            c.get(request).await
        })
        .await
    }

    pub async fn list(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<ObjectList, ApiError> {
        let request = proto::ListRequest {
            resource: kind.plural().into(),
            namespace: namespace.unwrap_or_default().into(),
            label_selector: options.label_selector.clone(),
            field_selector: options.field_selector.clone(),
            limit: options.limit,
            continue_token: options.continue_token.clone(),
        };
        let reply = self
            .call(
                request,
                |mut c, request| async move { c.list(request).await },
            )
            .await?;
        Ok(ObjectList {
            items: reply
                .items
                .iter()
                .map(|item| decode(kind, item))
                .collect::<Result<_, _>>()?,
            resource_version: reply.resource_version,
            continue_token: reply.continue_token,
        })
    }

    /// Replaces the object (its status is kept); with
    /// `metadata.resourceVersion` set, only if it is still the current one.
    pub async fn update(&mut self, object: &Object, dry_run: bool) -> Result<Object, ApiError> {
        self.write_object(ObjectWrite::Update, object, dry_run)
            .await
    }

    /// Replaces the status only (what agents and controllers write).
    pub async fn update_status(&mut self, object: &Object) -> Result<Object, ApiError> {
        self.write_object(ObjectWrite::UpdateStatus, object, false)
            .await
    }

    /// Binds pod `namespace/name` to `node` (what the scheduler does).
    /// A pod already bound is `Conflict`.
    pub async fn bind(&mut self, namespace: &str, name: &str, node: &str) -> Result<(), ApiError> {
        let binding = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let request = proto::ObjectRequest {
            resource: Kind::Pod.plural().into(),
            namespace: namespace.into(),
            object: serde_json::to_vec(&binding)
                .map_err(|e| ApiError::Internal(format!("encoding the binding: {e}")))?,
            dry_run: false,
        };
        self.call(
            request,
            |mut c, request| async move { c.bind(request).await },
        )
        .await
        .map(drop)
    }

    /// Applies a JSON merge patch (RFC 7386) to the object or its status.
    pub async fn patch(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        merge_patch: &serde_json::Value,
        status: bool,
    ) -> Result<Object, ApiError> {
        let request = proto::PatchRequest {
            resource: kind.plural().into(),
            namespace: namespace.unwrap_or_default().into(),
            name: name.into(),
            merge_patch: serde_json::to_vec(merge_patch)
                .map_err(|e| ApiError::Internal(format!("encoding the patch: {e}")))?,
            dry_run: false,
            status,
        };
        self.object_call(kind, request, |mut c, request| async move {
            c.patch(request).await
        })
        .await
    }

    /// Deletes an object; returns its last state (with a deletionTimestamp
    /// when finalizers keep it around a while longer).
    pub async fn delete(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        options: &proto::DeleteRequest,
    ) -> Result<Object, ApiError> {
        let request = proto::DeleteRequest {
            resource: kind.plural().into(),
            namespace: namespace.unwrap_or_default().into(),
            name: name.into(),
            ..options.clone()
        };
        self.object_call(kind, request, |mut c, request| async move {
            c.delete(request).await
        })
        .await
    }

    /// Watches `kind` from `resource_version` (empty: current objects as
    /// ADDED first). The stream ends with `ApiError::Gone` when the
    /// revision has been compacted: relist and watch again.
    pub async fn watch(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        options: &ListOptions,
        resource_version: &str,
        allow_bookmarks: bool,
    ) -> Result<WatchStream, ApiError> {
        let request = proto::WatchRequest {
            resource: kind.plural().into(),
            namespace: namespace.unwrap_or_default().into(),
            label_selector: options.label_selector.clone(),
            field_selector: options.field_selector.clone(),
            resource_version: resource_version.into(),
            allow_bookmarks,
        };
        let inner = self
            .call(
                request,
                |mut c, request| async move { c.watch(request).await },
            )
            .await?;
        Ok(WatchStream { kind, inner })
    }
}

/// The events of one watch, in revision order.
pub struct WatchStream {
    kind: Kind,
    inner: tonic::Streaming<proto::WatchEvent>,
}

impl WatchStream {
    /// The next event; None when the server ended the watch.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ApiError> {
        let Some(event) = self
            .inner
            .message()
            .await
            .map_err(|s| ApiError::from_status(&s))?
        else {
            return Ok(None);
        };
        let event_type = match event.r#type.as_str() {
            "ADDED" => WatchEventType::Added,
            "MODIFIED" => WatchEventType::Modified,
            "DELETED" => WatchEventType::Deleted,
            "BOOKMARK" => {
                let value: serde_json::Value = serde_json::from_slice(&event.object)
                    .map_err(|e| ApiError::Internal(format!("decoding a bookmark: {e}")))?;
                let resource_version = value["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                return Ok(Some(WatchEvent {
                    event_type: WatchEventType::Bookmark,
                    object: None,
                    resource_version,
                }));
            }
            other => {
                return Err(ApiError::Internal(format!(
                    "unknown watch event type {other:?}"
                )));
            }
        };
        let object = decode(self.kind, &event.object)?;
        let resource_version = object
            .metadata()
            .resource_version
            .clone()
            .unwrap_or_default();
        Ok(Some(WatchEvent {
            event_type,
            object: Some(object),
            resource_version,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::unreachable;

    #[test]
    fn a_broken_connection_sends_the_call_to_another_replica() {
        assert!(unreachable(&tonic::Status::unavailable(
            "connection refused"
        )));
        assert!(unreachable(&tonic::Status::unknown("transport error")));
        assert!(!unreachable(&tonic::Status::unknown("something else")));
        // A call queued on a connection that closed before it was sent.
        assert!(unreachable(&tonic::Status::cancelled(
            "operation was canceled"
        )));
        assert!(!unreachable(&tonic::Status::cancelled("by the caller")));
        assert!(!unreachable(&tonic::Status::not_found(
            "pods \"web\" not found"
        )));
        assert!(!unreachable(&tonic::Status::aborted("conflict")));
    }
}
