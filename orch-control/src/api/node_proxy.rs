//! Logs, exec, image imports and the node's dataplane (table, monitor):
//! the API server resolves the pod, its container and its
//! node, then relays the stream to that node agent's port, as
//! kube-apiserver proxies to the kubelet. It calls the node with this
//! replica's peer certificate (organization `system:orch-control`, which
//! the node requires) and checks the node's serving certificate against
//! the cluster CA and the node's name, so a pod's logs go only to the
//! node the pod is bound to.

use std::pin::Pin;

use k8s_openapi::api::core::v1::Pod;
use orch_core::api::ApiError;
use orch_core::api::proto::node_agent_client::NodeAgentClient;
use orch_core::api::proto::{
    ExecInput, ExecOutput, ImageImportChunk, ImageImportReply, LogChunk, MonitorEvent,
    NodeDataplaneReply, NodeDataplaneRequest, NodeMonitorRequest, PodLogsRequest, exec_input,
};
use orch_core::object::{Kind, Object};
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::registry::Registry;
use crate::store::raft::peer_tls::PeerTls;

pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;
pub type MonitorStream = Pin<Box<dyn Stream<Item = Result<MonitorEvent, Status>> + Send>>;
pub type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecOutput, Status>> + Send>>;

/// Where a pod's container runs.
struct Target {
    uid: String,
    container: String,
    node: String,
    addr: String,
}

pub struct NodeProxy {
    tls: PeerTls,
}

fn invalid(message: String) -> Status {
    ApiError::Invalid(message).to_status()
}

impl NodeProxy {
    pub fn new(tls: PeerTls) -> Self {
        Self { tls }
    }

    async fn target(
        &self,
        registry: &Registry,
        namespace: &str,
        name: &str,
        container: &str,
    ) -> Result<Target, Status> {
        if namespace.is_empty() || name.is_empty() {
            return Err(invalid("a pod's namespace and name are required".into()));
        }
        let pod: Pod = match registry.get(Kind::Pod, namespace, name).await {
            Ok(Object::Pod(pod)) => *pod,
            Ok(_) => return Err(Status::internal("the store holds a non-pod under pods")),
            Err(error) => return Err(error.to_status()),
        };
        let spec = pod.spec.unwrap_or_default();
        let names: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .map(|c| c.name.as_str())
            .collect();
        let container = match container {
            "" if spec.containers.len() == 1 => spec.containers[0].name.clone(),
            "" => {
                let choices: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
                return Err(invalid(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    choices.join(" ")
                )));
            }
            named if names.contains(&named) => named.to_string(),
            named => {
                return Err(invalid(format!(
                    "container {named} is not valid for pod {name}"
                )));
            }
        };
        let node = spec
            .node_name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid(format!("pod {name} is not scheduled to a node yet")))?;
        let addr = self
            .node_addr(
                registry,
                &node,
                &format!("pod {name} is bound to node {node}"),
            )
            .await?;
        Ok(Target {
            uid: pod.metadata.uid.unwrap_or_default(),
            container,
            node,
            addr,
        })
    }

    /// The address of node `node`'s agent port (`what` names why it is
    /// wanted, for the error when the node is not registered).
    async fn node_addr(
        &self,
        registry: &Registry,
        node: &str,
        what: &str,
    ) -> Result<String, Status> {
        let node_object = match registry.get(Kind::Node, "", node).await {
            Ok(Object::Node(node)) => node,
            Ok(_) => return Err(Status::internal("the store holds a non-node under nodes")),
            Err(ApiError::NotFound(_)) => {
                return Err(
                    ApiError::Unavailable(format!("{what}, which is not registered")).to_status(),
                );
            }
            Err(error) => return Err(error.to_status()),
        };
        let status = node_object.status.unwrap_or_default();
        let unreachable =
            |why: &str| ApiError::Unavailable(format!("node {node}: {why}")).to_status();
        let address = status
            .addresses
            .iter()
            .flatten()
            .find(|a| a.type_ == "InternalIP")
            .or_else(|| {
                status
                    .addresses
                    .iter()
                    .flatten()
                    .find(|a| a.type_ == "Hostname")
            })
            .map(|a| a.address.clone())
            .ok_or_else(|| unreachable("reports no address"))?;
        let port = status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port)
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| unreachable("reports no agent port (daemonEndpoints)"))?;
        Ok(match address.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{address}:{port}"),
        })
    }

    async fn connect(&self, target: &Target) -> Result<NodeAgentClient<Channel>, Status> {
        let unavailable = |e: &dyn std::fmt::Display| {
            ApiError::Unavailable(format!("node {} at {}: {e}", target.node, target.addr))
                .to_status()
        };
        let endpoint = self
            .tls
            .endpoint_for(
                &target.addr,
                &orch_core::api::identity::node_serving_name(&target.node),
            )
            .map_err(|e| unavailable(&e))?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unavailable(&orch_core::api::error_chain(&e)))?;
        Ok(NodeAgentClient::new(channel))
    }

    /// The container's log, streamed from its node.
    pub async fn logs(
        &self,
        registry: &Registry,
        mut request: PodLogsRequest,
    ) -> Result<LogStream, Status> {
        let target = self
            .target(
                registry,
                &request.namespace,
                &request.name,
                &request.container,
            )
            .await?;
        request.container = target.container.clone();
        request.pod_uid = target.uid.clone();
        let mut client = self.connect(&target).await?;
        let stream = client.container_logs(request).await?.into_inner();
        Ok(Box::pin(stream))
    }

    /// The agent port of node `node`, connected.
    async fn connect_node(
        &self,
        registry: &Registry,
        node: &str,
    ) -> Result<NodeAgentClient<Channel>, Status> {
        if node.is_empty() {
            return Err(invalid("a node name is required".into()));
        }
        registry
            .get(Kind::Node, "", node)
            .await
            .map_err(|e| e.to_status())?;
        let addr = self
            .node_addr(registry, node, &format!("node {node}"))
            .await?;
        let target = Target {
            uid: String::new(),
            container: String::new(),
            node: node.to_string(),
            addr,
        };
        self.connect(&target).await
    }

    /// Node `node`'s service table and map usage.
    pub async fn dataplane(
        &self,
        registry: &Registry,
        request: NodeDataplaneRequest,
    ) -> Result<NodeDataplaneReply, Status> {
        let mut client = self.connect_node(registry, &request.node).await?;
        Ok(client.dataplane(request).await?.into_inner())
    }

    /// What node `node`'s programs do, as it happens.
    pub async fn monitor(
        &self,
        registry: &Registry,
        request: NodeMonitorRequest,
    ) -> Result<MonitorStream, Status> {
        for address in &request.addresses {
            if address.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(invalid(format!(
                    "addresses: Invalid value: {address:?}: not an IPv4 address"
                )));
            }
        }
        let mut client = self.connect_node(registry, &request.node).await?;
        Ok(Box::pin(client.monitor(request).await?.into_inner()))
    }

    /// An image archive for the node the first chunk names; the names it
    /// now holds.
    pub async fn import_image(
        &self,
        registry: &Registry,
        mut inbound: Streaming<ImageImportChunk>,
    ) -> Result<ImageImportReply, Status> {
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| invalid("an image import names its node in its first chunk".into()))?;
        if first.node.is_empty() {
            return Err(invalid(
                "an image import names its node in its first chunk".into(),
            ));
        }
        let node = first.node.clone();
        let mut client = self.connect_node(registry, &node).await?;
        // A caller's stream that breaks ends the relay without the `done`
        // chunk, so the node imports nothing.
        let rest = inbound.map_while(Result::ok);
        let reply = client
            .import_image(tokio_stream::once(first).chain(rest))
            .await?;
        Ok(reply.into_inner())
    }

    /// An exec session: `first` (the start) and the caller's further
    /// input relayed to the node, the node's output back.
    pub async fn exec(
        &self,
        registry: &Registry,
        mut inbound: Streaming<ExecInput>,
    ) -> Result<ExecStream, Status> {
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| invalid("an exec stream starts with its start message".into()))?;
        let Some(exec_input::Input::Start(mut start)) = first.input else {
            return Err(invalid(
                "an exec stream starts with its start message".into(),
            ));
        };
        if start.command.is_empty() {
            return Err(invalid("exec: a command is required".into()));
        }
        let target = self
            .target(registry, &start.namespace, &start.name, &start.container)
            .await?;
        start.container = target.container.clone();
        start.pod_uid = target.uid.clone();
        let mut client = self.connect(&target).await?;
        let head = tokio_stream::once(ExecInput {
            input: Some(exec_input::Input::Start(start)),
        });
        // The caller's stream ends (or breaks): so does the node's input.
        let rest = inbound.map_while(Result::ok);
        let stream = client.exec(head.chain(rest)).await?.into_inner();
        Ok(Box::pin(stream))
    }
}
