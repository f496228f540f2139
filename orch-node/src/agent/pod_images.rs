//! Images for a node's containers: pulled as the pull policy says, with
//! the kubelet's back-off after failures (ErrImagePull, then
//! ImagePullBackOff), and unpacked for the container's root filesystem.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::Container;

use super::pods::{backoff, blocking};
use crate::image::registry::RegistryClient;
use crate::image::{ImageStore, Reference, unpack};

/// Failures of one container's image pulls.
struct PullFailure {
    at: Instant,
    count: u32,
    message: String,
}

pub struct ImagePuller {
    pub store: Arc<ImageStore>,
    pub registry: Arc<RegistryClient>,
    /// (pod uid, container) -> its last failures.
    pulls: Mutex<HashMap<(String, String), PullFailure>>,
}

impl ImagePuller {
    pub fn new(store: Arc<ImageStore>, registry: Arc<RegistryClient>) -> Self {
        Self {
            store,
            registry,
            pulls: Mutex::default(),
        }
    }

    /// Forgets the pull failures of a pod that is gone.
    pub fn forget(&self, uid: &str) {
        self.pulls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(pod, _), _| pod != uid);
    }

    /// Pulls (as the policy says) and unpacks the container's image.
    pub async fn ensure(
        &self,
        uid: &str,
        container: &Container,
    ) -> Result<(crate::image::Image, Vec<PathBuf>, String), (String, String)> {
        let name = container.image.clone().unwrap_or_default();
        let reference =
            Reference::parse(&name).map_err(|e| ("InvalidImageName".to_string(), e.to_string()))?;
        let policy = container
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into());
        let key = (uid.to_string(), container.name.clone());
        let present = self.store.resolve(&reference).ok().flatten();
        let needs_pull = match policy.as_str() {
            "Always" => true,
            "Never" => {
                if present.is_none() {
                    return Err((
                        "ErrImageNeverPull".into(),
                        format!("image {name} is not present with pull policy of Never"),
                    ));
                }
                false
            }
            _ => present.is_none(),
        };
        let descriptor = if needs_pull {
            if let Some(failure) = self
                .pulls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
            {
                let wait = backoff(failure.count as i32 - 1, 0.0);
                if failure.at.elapsed() < wait {
                    return Err((
                        "ImagePullBackOff".into(),
                        format!("Back-off pulling image {name:?}: {}", failure.message),
                    ));
                }
            }
            match self.registry.pull(&self.store, &reference, None).await {
                Ok(descriptor) => {
                    self.pulls
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                    descriptor
                }
                Err(error) if present.is_some() && policy == "Always" => {
                    tracing::warn!(%error, image = %name, "pull failed; using the image present");
                    present
                        .clone()
                        .ok_or_else(|| ("ErrImagePull".to_string(), error.to_string()))?
                }
                Err(error) => {
                    let message = error.to_string();
                    let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
                    let count = pulls.get(&key).map_or(0, |f| f.count) + 1;
                    pulls.insert(
                        key,
                        PullFailure {
                            at: Instant::now(),
                            count,
                            message: message.clone(),
                        },
                    );
                    return Err(("ErrImagePull".into(), message));
                }
            }
        } else {
            present.ok_or_else(|| {
                (
                    "ErrImagePull".to_string(),
                    format!("image {name} vanished from the node"),
                )
            })?
        };
        let images = self.store.clone();
        let unpacked = blocking(move || {
            let image = images.image(&descriptor)?;
            let layers = unpack::unpacked_layers(&images, &image)?;
            Ok::<_, crate::image::StoreError>((image, layers))
        })
        .await
        .map_err(|e| ("ErrImagePull".to_string(), e.to_string()))?;
        let image_id = format!("{}@{}", reference.name(), unpacked.0.manifest_digest);
        Ok((unpacked.0, unpacked.1, image_id))
    }

    /// `registry/repository@<manifest digest>` of the container's image as
    /// the node holds it ("" when it holds none).
    pub fn image_id(&self, container: &Container) -> String {
        let Ok(reference) = Reference::parse(container.image.as_deref().unwrap_or_default()) else {
            return String::new();
        };
        match self.store.resolve(&reference) {
            Ok(Some(descriptor)) => format!("{}@{}", reference.name(), descriptor.digest),
            _ => String::new(),
        }
    }
}
