//! Images for a node's containers: pulled as the pull policy says, with
//! the kubelet's back-off after failures (ErrImagePull, then
//! ImagePullBackOff), and unpacked for the container's root filesystem.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Container, Pod};
use orch_core::api::ApiClient;
use orch_core::object::{Kind, Object};

use super::pods::{backoff, blocking};
use crate::image::registry::{Credentials, RegistryClient};
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
    /// When each image was last used, for image garbage collection.
    pub last_used: super::image_gc::LastUsed,
}

impl ImagePuller {
    pub fn new(store: Arc<ImageStore>, registry: Arc<RegistryClient>) -> Self {
        Self {
            store,
            registry,
            pulls: Mutex::default(),
            last_used: Default::default(),
        }
    }

    /// Forgets the pull failures of a pod that is gone.
    pub fn forget(&self, uid: &str) {
        self.pulls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(pod, _), _| pod != uid);
    }

    /// Pulls (as the policy says, with the credentials of `pod`'s
    /// imagePullSecrets for the image's registry, read only when a pull is
    /// due) and unpacks the container's image.
    pub async fn ensure(
        &self,
        client: &mut ApiClient,
        pod: &Pod,
        container: &Container,
    ) -> Result<(crate::image::Image, Vec<PathBuf>, String), (String, String)> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let name = container.image.clone().unwrap_or_default();
        let reference =
            Reference::parse(&name).map_err(|e| ("InvalidImageName".to_string(), e.to_string()))?;
        let policy = container
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into());
        let key = (uid, container.name.clone());
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
            let credentials = pull_credentials(client, pod, &name).await;
            match self
                .registry
                .pull(&self.store, &reference, credentials.as_ref())
                .await
            {
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
        self.last_used
            .touch(&unpacked.0.manifest_digest.to_string());
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

/// A registry as a docker config names it (`https://host/v1/`, `host`,
/// `host:port`) reduced to host[:port], Docker Hub's aliases made one.
fn registry_host(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// The credentials a docker config (`.dockerconfigjson`'s `auths`, or an
/// old `.dockercfg` map) holds for `registry`.
pub fn credentials_in(config: &serde_json::Value, registry: &str) -> Option<Credentials> {
    let entries = config.get("auths").unwrap_or(config).as_object()?;
    let wanted = registry_host(registry);
    let entry = entries
        .iter()
        .find(|(key, _)| registry_host(key) == wanted)
        .map(|(_, entry)| entry)?;
    let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).unwrap_or_default();
    if !field("username").is_empty() {
        return Some(Credentials {
            username: field("username").to_string(),
            password: field("password").to_string(),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(field("auth"))
        .ok()?;
    let (username, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(Credentials {
        username: username.to_string(),
        password: password.to_string(),
    })
}

/// The credentials of the pod's imagePullSecrets for `image`'s registry:
/// the first secret that has some, as the kubelet tries them in order. A
/// secret that is missing or unreadable is skipped (the pull then fails
/// with the registry's refusal, naming imagePullSecrets).
pub async fn pull_credentials(
    client: &mut ApiClient,
    pod: &Pod,
    image: &str,
) -> Option<Credentials> {
    let reference = Reference::parse(image).ok()?;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let secrets = pod
        .spec
        .as_ref()?
        .image_pull_secrets
        .clone()
        .unwrap_or_default();
    for name in secrets
        .iter()
        .map(|s| s.name.clone())
        .filter(|n| !n.is_empty())
    {
        let secret = match client.get(Kind::Secret, Some(&namespace), &name).await {
            Ok(Object::Secret(secret)) => secret,
            other => {
                tracing::warn!(secret = %name, pod = ?pod.metadata.name, error = ?other.err(), "an image pull secret could not be read");
                continue;
            }
        };
        let data = secret.data.unwrap_or_default();
        let Some(bytes) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
        else {
            continue;
        };
        let Ok(config) = serde_json::from_slice::<serde_json::Value>(&bytes.0) else {
            tracing::warn!(secret = %name, "an image pull secret is not a docker config");
            continue;
        };
        if let Some(found) = credentials_in(&config, &reference.registry) {
            return Some(found);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_configs_give_the_registry_s_credentials() {
        let config = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
            "127.0.0.1:5000": {"username": "alice", "password": "pw"},
        }});
        assert_eq!(
            credentials_in(&config, "docker.io"),
            Some(Credentials {
                username: "hub".into(),
                password: "secret".into()
            })
        );
        assert_eq!(
            credentials_in(&config, "127.0.0.1:5000").map(|c| c.username),
            Some("alice".into())
        );
        assert_eq!(credentials_in(&config, "quay.io"), None);
        // The old .dockercfg: the map itself.
        let old = serde_json::json!({"quay.io": {"username": "q", "password": "p"}});
        assert_eq!(
            credentials_in(&old, "quay.io").map(|c| c.password),
            Some("p".into())
        );
    }
}
