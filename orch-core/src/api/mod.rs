//! orch's API protocol (`proto/api.proto`, tonic gRPC), its errors, and the
//! typed client orchctl, the node agents, the scheduler and the controllers
//! use. Objects travel as Kubernetes JSON; errors as gRPC statuses whose
//! codes carry Kubernetes' reasons (see [`ApiError`]).

pub mod bootstrap;
pub mod client;
pub mod config;
mod error;
pub mod identity;
pub mod join;

pub use client::{ApiClient, ListOptions, ObjectList, WatchEvent, WatchEventType};
pub use error::ApiError;

#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("orch.api.v1");
}

use crate::object::Kind;

/// An error with its causes (which name, say, what TLS refused).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

/// The kind a request's `resource` (plural) names.
pub fn kind_of_resource(resource: &str) -> Option<Kind> {
    Kind::ALL.iter().copied().find(|k| k.plural() == resource)
}

/// The store key of an object: `/registry/<plural>/<namespace>/<name>`, or
/// `/registry/<plural>/<name>` for cluster-scoped kinds.
pub fn object_key(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(namespace) if kind.namespaced() => {
            format!("/registry/{}/{namespace}/{name}", kind.plural())
        }
        _ => format!("/registry/{}/{name}", kind.plural()),
    }
}

/// The key prefix of every object of `kind` (in `namespace`, if given).
pub fn kind_prefix(kind: Kind, namespace: Option<&str>) -> String {
    match namespace {
        Some(namespace) if kind.namespaced() => {
            format!("/registry/{}/{namespace}/", kind.plural())
        }
        _ => format!("/registry/{}/", kind.plural()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_registry_layout() {
        assert_eq!(
            object_key(Kind::Deployment, Some("default"), "web"),
            "/registry/deployments/default/web"
        );
        assert_eq!(
            object_key(Kind::Node, Some("x"), "n1"),
            "/registry/nodes/n1"
        );
        assert_eq!(kind_prefix(Kind::Pod, None), "/registry/pods/");
        assert_eq!(kind_prefix(Kind::Pod, Some("a")), "/registry/pods/a/");
        assert_eq!(
            kind_of_resource("endpointslices"),
            Some(Kind::EndpointSlice)
        );
        assert_eq!(kind_of_resource("widgets"), None);
    }
}
