//! orch's object model: Kubernetes' own types (from `k8s-openapi`), quantities,
//! label selectors, names, validation, defaulting and manifest parsing; and
//! the API protocol with its typed client; and the runtime controllers share
//! (list+watch caches, work queues, leader election).

pub mod api;
pub mod defaults;
pub mod fields;
pub mod health_port;
pub mod manifest;
pub mod names;
pub mod networking;
pub mod object;
pub mod quantity;
pub mod runtime;
pub mod scheduling;
pub mod selector;
pub mod time;
pub mod validation;
