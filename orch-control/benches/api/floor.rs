//! The anchor of `bench api`: the same API served over the same transport
//! (tonic, TLS with certificates from orch's PKI, the API's authenticator)
//! by three processes, as many as the replicas, that do no work: a get
//! answers a pod held in memory, a create answers the object it was sent.
//! As many clients, configured alike and spread alike, load them in the
//! same run, so orch's figures can be read against what the transport
//! alone costs on this machine: latency below the floor's is out of reach
//! of any server on this transport here.

use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result};
use orch_control::api::auth::Authenticator;
use orch_control::pki::Pki;
use orch_core::api::ApiClient;
use orch_core::api::proto::api_server::{Api, ApiServer};
use orch_core::api::proto::{
    DeleteRequest, ExecInput, ExecOutput, GetRequest, ImageImportChunk, ImageImportReply,
    ListReply, ListRequest, LogChunk, MonitorEvent, NodeDataplaneReply, NodeDataplaneRequest,
    NodeMonitorRequest, ObjectReply, ObjectRequest, PatchRequest, PodLogsRequest, WatchEvent,
    WatchRequest,
};
use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::clusters::Process;

struct Floor {
    /// The JSON every get answers: a pod as orch serves it.
    pod: Vec<u8>,
}

type Events<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn not_measured<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not part of the transport floor"))
}

#[tonic::async_trait]
impl Api for Floor {
    type WatchStream = Events<WatchEvent>;
    type PodLogsStream = Events<LogChunk>;
    type NodeMonitorStream = Events<MonitorEvent>;
    type PodExecStream = Events<ExecOutput>;

    async fn get(&self, _: Request<GetRequest>) -> Result<Response<ObjectReply>, Status> {
        Ok(Response::new(ObjectReply {
            object: self.pod.clone(),
            warnings: Vec::new(),
        }))
    }

    async fn create(
        &self,
        request: Request<ObjectRequest>,
    ) -> Result<Response<ObjectReply>, Status> {
        Ok(Response::new(ObjectReply {
            object: request.into_inner().object,
            warnings: Vec::new(),
        }))
    }

    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        not_measured()
    }

    async fn update(&self, _: Request<ObjectRequest>) -> Result<Response<ObjectReply>, Status> {
        not_measured()
    }

    async fn update_status(
        &self,
        _: Request<ObjectRequest>,
    ) -> Result<Response<ObjectReply>, Status> {
        not_measured()
    }

    async fn patch(&self, _: Request<PatchRequest>) -> Result<Response<ObjectReply>, Status> {
        not_measured()
    }

    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<ObjectReply>, Status> {
        not_measured()
    }

    async fn bind(&self, _: Request<ObjectRequest>) -> Result<Response<ObjectReply>, Status> {
        not_measured()
    }

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        not_measured()
    }

    async fn pod_logs(
        &self,
        _: Request<PodLogsRequest>,
    ) -> Result<Response<Self::PodLogsStream>, Status> {
        not_measured()
    }

    async fn pod_exec(
        &self,
        _: Request<tonic::Streaming<ExecInput>>,
    ) -> Result<Response<Self::PodExecStream>, Status> {
        not_measured()
    }

    async fn import_image(
        &self,
        _: Request<tonic::Streaming<ImageImportChunk>>,
    ) -> Result<Response<ImageImportReply>, Status> {
        not_measured()
    }

    async fn node_dataplane(
        &self,
        _: Request<NodeDataplaneRequest>,
    ) -> Result<Response<NodeDataplaneReply>, Status> {
        not_measured()
    }

    async fn node_monitor(
        &self,
        _: Request<NodeMonitorRequest>,
    ) -> Result<Response<Self::NodeMonitorStream>, Status> {
        not_measured()
    }
}

/// Serves the floor from this process (the bench started with
/// `--floor-server DIR`): certificates of its own under `DIR/pki`, its
/// address printed as `floor on ADDR`, until killed.
pub async fn serve(dir: &std::path::Path) -> Result<()> {
    let pki = Pki::new(dir);
    pki.create_ca().context("the floor's CA")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("the floor's listener")?;
    let addr = listener.local_addr()?;
    pki.ensure_server_certificate(&["127.0.0.1".to_string()])
        .context("the floor's serving certificate")?;
    pki.write_admin_config(&[addr.to_string()])
        .context("the floor's client config")?;
    let pod = std::fs::read(dir.join(POD_FILE)).context("the pod to serve")?;
    println!("floor on {addr}");
    tonic::transport::Server::builder()
        .tls_config(pki.server_tls()?)
        .context("the floor's TLS")?
        .add_service(InterceptedService::new(
            ApiServer::new(Floor { pod }),
            Authenticator::new(Default::default()),
        ))
        .serve_with_incoming(orch_control::store::raft::transport::incoming(listener))
        .await
        .context("serving the floor")?;
    Ok(())
}

/// Where a floor server finds the pod its gets answer.
const POD_FILE: &str = "pod.json";

/// A floor server in a process of its own, as each replica is; killed
/// when dropped (before its directory goes).
pub struct FloorServer {
    _process: Process,
    dir: tempfile::TempDir,
}

impl FloorServer {
    /// Starts one, serving `pod` (JSON) to every get.
    pub fn start(pod: &[u8]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(POD_FILE), pod)?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("--floor-server")
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting a floor server")?;
        let mut process = Process::new(child);
        let line = process
            .read_line()
            .context("reading a floor server's address")?;
        if !line.starts_with("floor on ") {
            anyhow::bail!("a floor server did not start: {line:?}");
        }
        Ok(Self {
            _process: process,
            dir,
        })
    }

    /// The client config of this server, configured as orch's admin's is.
    pub fn config(&self) -> Result<orch_core::api::config::ClientConfig> {
        let path = Pki::new(self.dir.path()).path(orch_control::pki::ADMIN_CONFIG);
        orch_core::api::config::ClientConfig::load(&path)
            .with_context(|| path.display().to_string())
    }
}

/// `count` clients spread over `servers` in turn, as the bench's clients
/// are over the replicas.
pub fn clients(servers: &[FloorServer], count: usize) -> Result<Vec<ApiClient>> {
    let configs = servers
        .iter()
        .map(FloorServer::config)
        .collect::<Result<Vec<_>>>()?;
    (0..count)
        .map(|index| {
            Ok(ApiClient::new(
                &configs[index % configs.len()],
                Duration::from_secs(30),
            )?)
        })
        .collect()
}
