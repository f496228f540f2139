//! The agent's own port (the kubelet's 10250): container logs, exec,
//! image imports and the dataplane's table and monitor for the API servers, over TLS with the node's
//! certificate. Only control-plane replicas (organization
//! `system:orch-control`) may call it; the API server authenticated and
//! authorized the person behind the call.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use crate::dataplane::PinLayout;
use crate::dataplane::monitor::Monitor;
use crate::dataplane::services::ServiceTable;
use crate::image::{ImageStore, import};

use orch_core::api::ApiError;
use orch_core::api::config::ClientConfig;
use orch_core::api::identity::{OrganizationAuthorizer, REPLICAS};
use orch_core::api::proto::node_agent_server::{NodeAgent, NodeAgentServer};
use orch_core::api::proto::{
    ExecInput, ExecOutput, ImageImportChunk, ImageImportReply, LogChunk, MapUsage, MonitorEvent,
    NodeDataplaneReply, NodeDataplaneRequest, NodeMonitorRequest, PodLogsRequest,
};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecOutput, Status>> + Send>>;

pub struct AgentService {
    /// `<state>/pods`.
    pods_dir: PathBuf,
    /// Where uploaded image archives wait for their import.
    imports_dir: PathBuf,
    images: Arc<ImageStore>,
    /// Set once the agent's dataplane runs.
    dataplane: Arc<OnceLock<NodeDataplane>>,
}

/// What the port shows of the node's dataplane.
pub struct NodeDataplane {
    pub layout: PinLayout,
    /// None when no program of the node emits events.
    pub monitor: Option<Arc<Monitor>>,
}

type MonitorStream = Pin<Box<dyn Stream<Item = Result<MonitorEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for AgentService {
    type ContainerLogsStream = LogStream;
    type ExecStream = ExecStream;
    type MonitorStream = MonitorStream;

    async fn dataplane(
        &self,
        _request: Request<NodeDataplaneRequest>,
    ) -> Result<Response<NodeDataplaneReply>, Status> {
        let Some(dataplane) = self.dataplane.get() else {
            return Err(no_dataplane());
        };
        let layout = dataplane.layout.clone();
        let read = tokio::task::spawn_blocking(move || {
            let services = match ServiceTable::open(&layout) {
                Ok(table) => crate::dataplane::services::render(&table.list()?),
                Err(_) => String::new(),
            };
            let maps = crate::dataplane::metrics::map_use(&layout)?;
            Ok::<_, crate::dataplane::DataplaneError>((services, maps))
        })
        .await
        .map_err(|_| Status::internal("the dataplane reader died"))?;
        let (services, maps) = read.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(NodeDataplaneReply {
            services,
            maps: maps
                .into_iter()
                .map(|m| MapUsage {
                    name: m.name.to_string(),
                    entries: m.entries,
                    max_entries: m.max_entries,
                    evicts: m.evicts,
                })
                .collect(),
        }))
    }

    async fn monitor(
        &self,
        request: Request<NodeMonitorRequest>,
    ) -> Result<Response<MonitorStream>, Status> {
        let request = request.into_inner();
        let Some(monitor) = self.dataplane.get().and_then(|d| d.monitor.clone()) else {
            return Err(no_dataplane());
        };
        let mut watch = monitor.watch(!request.drops_only);
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = watch.events.recv() => event,
                    // The caller left: so does the watch (and its traces).
                    () = sender.closed() => return,
                };
                match event {
                    Ok(event) => {
                        let wanted = (!request.drops_only || event.kind == "drop")
                            && crate::dataplane::monitor::concerns(&event, &request.addresses);
                        if wanted && sender.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    // Too slow a reader: it misses what it fell behind on.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn container_logs(
        &self,
        request: Request<PodLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let request = request.into_inner();
        let dir = super::container_logs::pod_dir(&self.pods_dir, &request.pod_uid)?;
        let receiver = super::container_logs::stream(dir, request)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn import_image(
        &self,
        request: Request<Streaming<ImageImportChunk>>,
    ) -> Result<Response<ImageImportReply>, Status> {
        use tokio::io::AsyncWriteExt as _;
        let mut inbound = request.into_inner();
        let internal = |e: &dyn std::fmt::Display| Status::internal(e.to_string());
        tokio::fs::create_dir_all(&self.imports_dir)
            .await
            .map_err(|e| internal(&e))?;
        let path = self.imports_dir.join(format!(
            "{}-{}.tar",
            std::process::id(),
            orch_core::time::now().as_nanosecond()
        ));
        // Removed however this call ends (the caller may vanish mid-upload).
        let _upload = crate::files::RemoveOnDrop(path.clone());
        let received = async {
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| internal(&e))?;
            let room = super::machine::disk(&self.imports_dir)
                .map(|d| d.available)
                .unwrap_or(u64::MAX);
            let mut total = 0u64;
            let mut done = false;
            while let Some(chunk) = inbound.message().await? {
                done = chunk.done;
                total += chunk.data.len() as u64;
                if total > room {
                    return Err(Status::resource_exhausted(format!(
                        "the image archive is larger than the node's free space ({room} bytes)"
                    )));
                }
                file.write_all(&chunk.data)
                    .await
                    .map_err(|e| internal(&e))?;
            }
            if !done {
                return Err(ApiError::Invalid(
                    "the image archive's upload was cut short; nothing was imported".into(),
                )
                .to_status());
            }
            file.sync_all().await.map_err(|e| internal(&e))
        }
        .await;
        let imported = match received {
            Ok(()) => {
                let (images, archive) = (self.images.clone(), path.clone());
                tokio::task::spawn_blocking(move || import::import_archive(&images, &archive))
                    .await
                    .map_err(|_| Status::internal("the import thread died"))?
                    .map_err(|e| {
                        ApiError::Invalid(format!("the uploaded image archive: {e}")).to_status()
                    })
            }
            Err(status) => Err(status),
        };
        let names = imported?;
        Ok(Response::new(ImageImportReply {
            images: names.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<ExecStream>, Status> {
        let receiver = super::exec_session::run(&self.pods_dir, request.into_inner()).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

fn no_dataplane() -> Status {
    Status::failed_precondition(
        "this node's dataplane is not running: its agent is starting, or runs without --pod-network-interface and --service-cgroup",
    )
}

/// The port's TLS: the node's certificate from its client config (which
/// `orch-control node-config` signs for serving too), and the cluster CA
/// for callers, whose certificate is required.
pub fn tls(config: &ClientConfig) -> Result<ServerTlsConfig, String> {
    let (Some(certificate), Some(key)) = (&config.client_certificate, &config.client_key) else {
        return Err("the node's config has no client-certificate and client-key: the agent's port serves with them (make one with `orch-control node-config`)".into());
    };
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(certificate, key))
        .client_ca_root(Certificate::from_pem(&config.certificate_authority))
        .client_auth_optional(false))
}

pub fn service(
    state_dir: &std::path::Path,
    images: Arc<ImageStore>,
    dataplane: Arc<OnceLock<NodeDataplane>>,
) -> InterceptedService<NodeAgentServer<AgentService>, OrganizationAuthorizer> {
    // Uploads a previous agent left unfinished.
    let _ = std::fs::remove_dir_all(state_dir.join("imports"));
    InterceptedService::new(
        NodeAgentServer::new(AgentService {
            pods_dir: state_dir.join("pods"),
            imports_dir: state_dir.join("imports"),
            images,
            dataplane,
        })
        // Image archives come in chunks; each is bounded here.
        .max_decoding_message_size(8 << 20),
        OrganizationAuthorizer::new(&[REPLICAS], "the node agent's port", "NodeAgent"),
    )
}
