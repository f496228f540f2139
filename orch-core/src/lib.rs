//! orch's object model: Kubernetes' own types (from `k8s-openapi`), quantities,
//! label selectors, names, validation, defaulting and manifest parsing; and
//! the API protocol with its typed client.

pub mod api;
pub mod defaults;
pub mod fields;
pub mod manifest;
pub mod names;
pub mod object;
pub mod quantity;
pub mod selector;
pub mod validation;
