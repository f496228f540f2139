//! The agent's own port (the kubelet's 10250): container logs and exec for
//! the API servers, over TLS with the node's certificate. Only control-
//! plane replicas (organization `system:orch-control`) may call it; the
//! API server authenticated and authorized the person behind the call.

use std::path::PathBuf;
use std::pin::Pin;

use orch_core::api::config::ClientConfig;
use orch_core::api::identity::{OrganizationAuthorizer, REPLICAS};
use orch_core::api::proto::node_agent_server::{NodeAgent, NodeAgentServer};
use orch_core::api::proto::{ExecInput, ExecOutput, LogChunk, PodLogsRequest};
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
}

#[tonic::async_trait]
impl NodeAgent for AgentService {
    type ContainerLogsStream = LogStream;
    type ExecStream = ExecStream;

    async fn container_logs(
        &self,
        request: Request<PodLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let request = request.into_inner();
        let dir = super::container_logs::pod_dir(&self.pods_dir, &request.pod_uid)?;
        let receiver = super::container_logs::stream(dir, request)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<ExecStream>, Status> {
        let receiver = super::exec_session::run(&self.pods_dir, request.into_inner()).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
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
) -> InterceptedService<NodeAgentServer<AgentService>, OrganizationAuthorizer> {
    InterceptedService::new(
        NodeAgentServer::new(AgentService {
            pods_dir: state_dir.join("pods"),
        }),
        OrganizationAuthorizer::new(&[REPLICAS], "the node agent's port", "NodeAgent"),
    )
}
