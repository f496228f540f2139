//! orch's object model: Kubernetes' own types (from `k8s-openapi`).

pub mod object;
