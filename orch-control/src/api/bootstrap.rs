//! The Bootstrap service: a node presenting a valid bootstrap token (a
//! Secret `kube-system/bootstrap-token-<id>`, made by `orch-control token
//! create`) gets a client certificate for `system:node:<name>` signed by
//! the cluster CA, for a name no registered Node has. Served on the API
//! port without client authentication: the token is the credential,
//! checked here. The certificate names the node as a client and, for its
//! agent's port, `<name>.nodes.orch.internal` as a server: never an API
//! server's name. Deleting the token stops new joins; certificates already
//! issued stay valid until they expire (there is no revocation yet).

use std::sync::Arc;

use orch_core::api::ApiError;
use orch_core::api::bootstrap::{
    BootstrapToken, EXPIRATION, SECRET_NAMESPACE, SECRET_TYPE, TOKEN_ID, TOKEN_SECRET,
    USAGE_AUTHENTICATION,
};
use orch_core::api::proto::bootstrap_server::{Bootstrap, BootstrapServer};
use orch_core::api::proto::{JoinNodeReply, JoinNodeRequest};
use orch_core::object::{Kind, Object};
use tonic::{Request, Response, Status};

use super::registry::Registry;
use crate::pki::Pki;

pub struct BootstrapService {
    registry: Arc<Registry>,
    pki: Pki,
}

pub fn bootstrap_server(registry: Arc<Registry>, pki: Pki) -> BootstrapServer<BootstrapService> {
    BootstrapServer::new(BootstrapService { registry, pki })
}

impl BootstrapService {
    /// Checks the token against its Secret: Err is the status to answer.
    async fn check(&self, token: &BootstrapToken) -> Result<(), Status> {
        // One message for an unknown id and a wrong secret: a caller
        // learns nothing about which ids exist.
        let invalid = || Status::unauthenticated("invalid bootstrap token");
        let secret = match self
            .registry
            .get(Kind::Secret, SECRET_NAMESPACE, &token.secret_name())
            .await
        {
            Ok(Object::Secret(secret)) => secret,
            Ok(_) | Err(ApiError::NotFound(_)) => return Err(invalid()),
            Err(error) => return Err(error.to_status()),
        };
        if secret.type_.as_deref() != Some(SECRET_TYPE) {
            return Err(invalid());
        }
        let data = secret.data.unwrap_or_default();
        let field = |key: &str| data.get(key).map(|value| value.0.clone());
        if field(TOKEN_ID).as_deref() != Some(token.id.as_bytes())
            || !field(TOKEN_SECRET).is_some_and(|secret| token.secret_matches(&secret))
        {
            return Err(invalid());
        }
        if field(USAGE_AUTHENTICATION).as_deref() != Some(b"true".as_slice()) {
            return Err(Status::permission_denied(format!(
                "bootstrap token {}: not for authentication ({USAGE_AUTHENTICATION} is not \"true\")",
                token.id
            )));
        }
        if let Some(expiration) = field(EXPIRATION) {
            let text = String::from_utf8_lossy(&expiration).into_owned();
            let expires: k8s_openapi::jiff::Timestamp = text.parse().map_err(|_| invalid())?;
            if orch_core::time::now() >= expires {
                return Err(Status::unauthenticated(format!(
                    "bootstrap token {} expired at {text}",
                    token.id
                )));
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Bootstrap for BootstrapService {
    async fn join_node(
        &self,
        request: Request<JoinNodeRequest>,
    ) -> Result<Response<JoinNodeReply>, Status> {
        let request = request.into_inner();
        let token = BootstrapToken::parse(&request.token)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let problems = orch_core::names::is_dns1123_subdomain(&request.node_name);
        if !problems.is_empty() {
            return Err(Status::invalid_argument(format!(
                "node name {:?}: {}",
                request.node_name,
                problems.join("; ")
            )));
        }
        self.check(&token).await?;
        // A token makes new nodes: it never takes over a registered node's
        // name (and so its pods), as kubeadm join refuses one.
        match self.registry.get(Kind::Node, "", &request.node_name).await {
            Err(ApiError::NotFound(_)) => {}
            Ok(_) => {
                return Err(Status::already_exists(format!(
                    "node {:?} is already registered: delete it (orchctl delete node {}) to join again under its name",
                    request.node_name, request.node_name
                )));
            }
            Err(error) => return Err(error.to_status()),
        }
        let config = self
            .pki
            .node_config(&request.node_name, &[])
            .map_err(|e| Status::internal(format!("signing the node's certificate: {e}")))?;
        tracing::info!(node = %request.node_name, token = %token.id, "a node joined with a bootstrap token");
        Ok(Response::new(JoinNodeReply {
            client_certificate: config.client_certificate.unwrap_or_default().into_bytes(),
            client_key: config.client_key.unwrap_or_default().into_bytes(),
        }))
    }
}
