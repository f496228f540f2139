//! An OCI distribution (registry v2) client: pulls images into the store
//! (manifest lists resolved to this platform, every blob verified against
//! its digest as it arrives) and pushes them (tests and `cargo xtask up`
//! publish locally built images this way). Anonymous, bearer-token and
//! basic authentication, as registries ask with `WWW-Authenticate`.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Mutex;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use thiserror::Error;

use super::digest::Digest;
use super::oci::{self, Descriptor, Index, Manifest};
use super::reference::Reference;
use super::store::{DOCUMENT_LIMIT, ImageStore, StoreError};

/// Registry credentials (from a pod's imagePullSecrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("{reference}: manifest unknown to {registry}")]
    NotFound { reference: String, registry: String },
    #[error("{reference}: {registry} refused access ({status}): check imagePullSecrets")]
    Unauthorized {
        reference: String,
        registry: String,
        status: StatusCode,
    },
    #[error("{reference}: {url}: {}", causes(source))]
    Http {
        reference: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{reference}: {url} answered {status}: {body}")]
    Status {
        reference: String,
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{reference}: {reason}")]
    Invalid { reference: String, reason: String },
    #[error("{reference}: no manifest for {platform} in the image index")]
    NoPlatform { reference: String, platform: String },
    #[error("{reference}: {source}")]
    Store {
        reference: String,
        #[source]
        source: StoreError,
    },
}

/// What went wrong under an HTTP error (the connection refused, the name
/// not resolved): reqwest's own message only repeats the URL.
fn causes(error: &reqwest::Error) -> String {
    std::error::Error::source(error)
        .map(orch_core::api::error_chain)
        .unwrap_or_else(|| error.to_string())
}

/// (registry host, scope, credentials' user and password digest).
type TokenKey = (String, String, Option<String>);

/// Token responses are small JSON documents.
const TOKEN_LIMIT: u64 = 64 << 10;

/// A registry client; keeps bearer tokens per registry, scope and
/// credentials.
pub struct RegistryClient {
    http: reqwest::Client,
    /// Registries spoken to over plain HTTP besides loopback ones.
    insecure: Vec<String>,
    tokens: Mutex<HashMap<TokenKey, String>>,
}

fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The fields of a `WWW-Authenticate: Bearer realm=...,service=...` header.
fn challenge(header: &str) -> Option<(String, HashMap<String, String>)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let mut fields = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        fields.insert(key.trim().to_ascii_lowercase(), value.to_string());
        rest = remaining.trim_start_matches([',', ' ']);
    }
    Some((scheme.to_ascii_lowercase(), fields))
}

impl RegistryClient {
    pub fn new(insecure: Vec<String>) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .user_agent(concat!("orch-node/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(std::time::Duration::from_secs(10))
                // A registry that stops sending mid-body fails the pull
                // (retried with back-off) instead of hanging it.
                .read_timeout(std::time::Duration::from_secs(60))
                .build()?,
            insecure,
            tokens: Mutex::default(),
        })
    }

    fn base(&self, reference: &Reference) -> String {
        let host = reference.api_host();
        let scheme = if is_loopback(host) || self.insecure.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}/v2/{}", reference.repository)
    }

    /// Sends a request, answering one authentication challenge.
    async fn send(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
        scope: &str,
        url: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let http_error = |source| RegistryError::Http {
            reference: reference.to_string(),
            url: url.to_string(),
            source,
        };
        // Tokens are per credentials too: a pull without (or with other)
        // credentials must not ride on another pod's token.
        let key = (
            reference.api_host().to_string(),
            scope.to_string(),
            credentials.map(|c| format!("{}:{}", c.username, Digest::of(c.password.as_bytes()))),
        );
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let with_token = |request: reqwest::RequestBuilder, token: &Option<String>| match token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        };
        let response = with_token(build(&self.http), &cached)
            .send()
            .await
            .map_err(http_error)?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let header = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let unauthorized = |status| RegistryError::Unauthorized {
            reference: reference.to_string(),
            registry: reference.registry.clone(),
            status,
        };
        match challenge(&header) {
            Some((scheme, fields)) if scheme == "bearer" => {
                let realm = fields
                    .get("realm")
                    .ok_or_else(|| unauthorized(StatusCode::UNAUTHORIZED))?;
                let mut token_request = self.http.get(realm).query(&[("scope", scope)]);
                if let Some(service) = fields.get("service") {
                    token_request = token_request.query(&[("service", service)]);
                }
                if let Some(credentials) = credentials {
                    token_request = token_request
                        .basic_auth(&credentials.username, Some(&credentials.password));
                }
                let answer = token_request.send().await.map_err(http_error)?;
                if !answer.status().is_success() {
                    return Err(unauthorized(answer.status()));
                }
                let body = bounded(answer, TOKEN_LIMIT).await.map_err(http_error)?;
                let body: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let token = body["token"]
                    .as_str()
                    .or_else(|| body["access_token"].as_str())
                    .ok_or_else(|| unauthorized(StatusCode::UNAUTHORIZED))?
                    .to_string();
                self.tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, token.clone());
                let retried = with_token(build(&self.http), &Some(token))
                    .send()
                    .await
                    .map_err(http_error)?;
                if retried.status() == StatusCode::UNAUTHORIZED
                    || retried.status() == StatusCode::FORBIDDEN
                {
                    return Err(unauthorized(retried.status()));
                }
                Ok(retried)
            }
            Some((scheme, _)) if scheme == "basic" => {
                let Some(credentials) = credentials else {
                    return Err(unauthorized(StatusCode::UNAUTHORIZED));
                };
                let retried = build(&self.http)
                    .basic_auth(&credentials.username, Some(&credentials.password))
                    .send()
                    .await
                    .map_err(http_error)?;
                if retried.status() == StatusCode::UNAUTHORIZED {
                    return Err(unauthorized(retried.status()));
                }
                Ok(retried)
            }
            _ => Err(unauthorized(StatusCode::UNAUTHORIZED)),
        }
    }

    async fn failed(
        reference: &Reference,
        url: &str,
        response: reqwest::Response,
    ) -> RegistryError {
        let status = response.status();
        let body = bounded(response, 4096).await.unwrap_or_default();
        let body = String::from_utf8_lossy(&body).into_owned();
        RegistryError::Status {
            reference: reference.to_string(),
            url: url.to_string(),
            status,
            body: body.chars().take(300).collect(),
        }
    }

    /// A manifest or index: its media type, bytes and digest (checked
    /// against `expected` when the reference pins one).
    async fn manifest(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
        wanted: &str,
        expected: Option<&Digest>,
    ) -> Result<(String, Vec<u8>, Digest), RegistryError> {
        let url = format!("{}/manifests/{wanted}", self.base(reference));
        let scope = format!("repository:{}:pull", reference.repository);
        let response = self
            .send(reference, credentials, &scope, &url, |http| {
                http.get(&url)
                    .header(ACCEPT, oci::MANIFEST_TYPES.join(", "))
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                reference: reference.to_string(),
                registry: reference.registry.clone(),
            });
        }
        if !response.status().is_success() {
            return Err(Self::failed(reference, &url, response).await);
        }
        let header_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        if response
            .content_length()
            .is_some_and(|n| n > DOCUMENT_LIMIT)
        {
            return Err(RegistryError::Invalid {
                reference: reference.to_string(),
                reason: format!("manifest larger than {DOCUMENT_LIMIT} bytes"),
            });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|source| RegistryError::Http {
                reference: reference.to_string(),
                url: url.clone(),
                source,
            })?;
        let digest = Digest::of(&bytes);
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(RegistryError::Store {
                reference: reference.to_string(),
                source: StoreError::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                    size: bytes.len() as u64,
                },
            });
        }
        let body_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string));
        let media_type = body_type
            .or(header_type)
            .ok_or_else(|| RegistryError::Invalid {
                reference: reference.to_string(),
                reason: "the manifest names no media type".into(),
            })?;
        Ok((media_type, bytes.to_vec(), digest))
    }

    /// Pulls `reference` into `store` and names it there; returns the
    /// manifest's descriptor.
    pub async fn pull(
        &self,
        store: &ImageStore,
        reference: &Reference,
        credentials: Option<&Credentials>,
    ) -> Result<Descriptor, RegistryError> {
        let invalid = |reason: String| RegistryError::Invalid {
            reference: reference.to_string(),
            reason,
        };
        let stored = |source| RegistryError::Store {
            reference: reference.to_string(),
            source,
        };
        // Blobs written before the name is: no garbage collection meanwhile.
        let _operation = store.operation();
        let (mut media_type, mut bytes, repo_digest) = self
            .manifest(
                reference,
                credentials,
                &reference.manifest_reference(),
                reference.digest.as_ref(),
            )
            .await?;
        let mut digest = repo_digest.clone();
        if oci::is_index(&media_type) {
            let index: Index =
                serde_json::from_slice(&bytes).map_err(|e| invalid(format!("image index: {e}")))?;
            let platform = oci::host_platform();
            let chosen = index
                .manifests
                .iter()
                .find(|d| {
                    d.platform.as_ref().is_some_and(|p| {
                        p.os == platform.os && p.architecture == platform.architecture
                    })
                })
                .ok_or_else(|| RegistryError::NoPlatform {
                    reference: reference.to_string(),
                    platform: format!("{}/{}", platform.os, platform.architecture),
                })?;
            let chosen_digest =
                Digest::parse(&chosen.digest).map_err(|e| invalid(e.to_string()))?;
            store
                .put_bytes(&bytes, Some(&repo_digest))
                .map_err(stored)?;
            (media_type, bytes, digest) = self
                .manifest(reference, credentials, &chosen.digest, Some(&chosen_digest))
                .await?;
        }
        if media_type != oci::OCI_MANIFEST && media_type != oci::DOCKER_MANIFEST {
            return Err(invalid(format!(
                "manifest media type {media_type:?} is not supported"
            )));
        }
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("manifest: {e}")))?;
        // An artifact (a chart, a signature) is not an image to run.
        if manifest.config.media_type != oci::OCI_CONFIG
            && manifest.config.media_type != oci::DOCKER_CONFIG
        {
            return Err(invalid(format!(
                "config media type {:?}: not a container image",
                manifest.config.media_type
            )));
        }
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let blob_digest = Digest::parse(&blob.digest).map_err(|e| invalid(e.to_string()))?;
            if !store.has_blob(&blob_digest) {
                self.fetch_blob(store, reference, credentials, &blob_digest, blob.size)
                    .await?;
            }
        }
        store.put_bytes(&bytes, Some(&digest)).map_err(stored)?;
        let descriptor = Descriptor::new(&media_type, &digest, bytes.len() as u64);
        store
            .tag(reference, &descriptor, &repo_digest)
            .map_err(stored)?;
        Ok(descriptor)
    }

    async fn fetch_blob(
        &self,
        store: &ImageStore,
        reference: &Reference,
        credentials: Option<&Credentials>,
        digest: &Digest,
        size: u64,
    ) -> Result<(), RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base(reference));
        let scope = format!("repository:{}:pull", reference.repository);
        let mut response = self
            .send(reference, credentials, &scope, &url, |http| http.get(&url))
            .await?;
        if !response.status().is_success() {
            return Err(Self::failed(reference, &url, response).await);
        }
        let stored = |source| RegistryError::Store {
            reference: reference.to_string(),
            source,
        };
        let mut writer = store.blob_writer(digest).map_err(stored)?;
        let mut received = 0u64;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(source) => {
                    writer.abort();
                    return Err(RegistryError::Http {
                        reference: reference.to_string(),
                        url,
                        source,
                    });
                }
            };
            received += chunk.len() as u64;
            if received > size {
                writer.abort();
                return Err(stored(StoreError::SizeMismatch {
                    digest: digest.clone(),
                    size: received,
                    expected: size,
                }));
            }
            if let Err(source) = writer.write_all(&chunk) {
                writer.abort();
                return Err(stored(StoreError::Io {
                    path: store.blob_path(digest),
                    source,
                }));
            }
        }
        tokio::task::spawn_blocking(move || writer.commit(Some(size)))
            .await
            .map_err(|e| invalid_join(reference, e))?
            .map_err(stored)
    }

    /// Pushes the image `source` names in `store` to the registry as
    /// `target`. Returns the manifest digest.
    pub async fn push(
        &self,
        store: &ImageStore,
        source: &Reference,
        target: &Reference,
        credentials: Option<&Credentials>,
    ) -> Result<Digest, RegistryError> {
        let stored = |e| RegistryError::Store {
            reference: source.to_string(),
            source: e,
        };
        let descriptor = store
            .resolve(source)
            .map_err(stored)?
            .ok_or_else(|| stored(StoreError::NotPresent(source.to_string())))?;
        let image = store.image(&descriptor).map_err(stored)?;
        let scope = format!("repository:{}:pull,push", target.repository);
        let base = self.base(target);
        for blob in std::iter::once(&image.manifest.config).chain(&image.manifest.layers) {
            let digest = Digest::parse(&blob.digest).map_err(|e| stored(e.into()))?;
            let head = format!("{base}/blobs/{digest}");
            let exists = self
                .send(target, credentials, &scope, &head, |http| http.head(&head))
                .await?;
            if exists.status().is_success() {
                continue;
            }
            let start = format!("{base}/blobs/uploads/");
            let started = self
                .send(target, credentials, &scope, &start, |http| {
                    http.post(&start)
                })
                .await?;
            if started.status() != StatusCode::ACCEPTED {
                return Err(Self::failed(target, &start, started).await);
            }
            let location = started
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| RegistryError::Invalid {
                    reference: target.to_string(),
                    reason: "upload started without a Location".into(),
                })?;
            let mut upload = if location.starts_with("http") {
                location.to_string()
            } else {
                let origin = base.split("/v2/").next().unwrap_or_default();
                format!("{origin}{location}")
            };
            upload.push(if upload.contains('?') { '&' } else { '?' });
            upload.push_str(&format!("digest={digest}"));
            let path = store.blob_path(&digest);
            let bytes = tokio::fs::read(&path).await.map_err(|e| {
                stored(StoreError::Io {
                    path: path.clone(),
                    source: e,
                })
            })?;
            let put = self
                .send(target, credentials, &scope, &upload, |http| {
                    http.put(&upload)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .body(bytes.clone())
                })
                .await?;
            if put.status() != StatusCode::CREATED {
                return Err(Self::failed(target, &upload, put).await);
            }
        }
        let bytes = store
            .read_document("manifest", &image.manifest_digest)
            .map_err(stored)?;
        let url = format!("{base}/manifests/{}", target.manifest_reference());
        let media_type = descriptor.media_type.clone();
        let put = self
            .send(target, credentials, &scope, &url, |http| {
                http.put(&url)
                    .header(CONTENT_TYPE, media_type.clone())
                    .body(bytes.clone())
            })
            .await?;
        if put.status() != StatusCode::CREATED {
            return Err(Self::failed(target, &url, put).await);
        }
        Ok(image.manifest_digest)
    }
}

/// A response body read up to `limit` bytes (what is past it is dropped):
/// a registry cannot make the agent hold more than that.
async fn bounded(mut response: reqwest::Response, limit: u64) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = (limit as usize).saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() as u64 >= limit {
            break;
        }
    }
    Ok(body)
}

fn invalid_join(reference: &Reference, error: tokio::task::JoinError) -> RegistryError {
    RegistryError::Invalid {
        reference: reference.to_string(),
        reason: format!("storing a blob: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (scheme, fields) = challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .expect("parses");
        assert_eq!(scheme, "bearer");
        assert_eq!(fields["realm"], "https://auth.example/token");
        assert_eq!(fields["scope"], "repository:a/b:pull");
        let (scheme, fields) = challenge(r#"Basic realm="Registry Realm""#).expect("parses");
        assert_eq!(
            (scheme.as_str(), fields["realm"].as_str()),
            ("basic", "Registry Realm")
        );
    }

    #[test]
    fn loopback_registries_speak_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
