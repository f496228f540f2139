//! Images on a node: references, the OCI-layout store, pulling from and
//! pushing to registries, importing archives, unpacking layers for
//! overlayfs, and building the small test and demo images.

pub mod build;
pub mod digest;
pub mod import;
pub mod local_registry;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use reference::Reference;
pub use store::{Image, ImageStore, StoreError};
