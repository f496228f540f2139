//! Image references as Kubernetes and Docker read them: `busybox` is
//! `docker.io/library/busybox:latest`; `127.0.0.1:5000/web:1`,
//! `registry.example/team/app@sha256:...`.

use std::fmt;

use thiserror::Error;

use super::digest::{Digest, DigestError};

/// Docker Hub's name in references, and the host its API is served on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("image {0:?}: empty")]
    Empty(String),
    #[error("image {image:?}: {reason}")]
    Invalid { image: String, reason: String },
    #[error("image {image:?}: {source}")]
    Digest {
        image: String,
        #[source]
        source: DigestError,
    },
}

/// A parsed reference: where the image lives and which one it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `127.0.0.1:5000`, `registry.example`.
    pub registry: String,
    /// `library/busybox`, `team/app`.
    pub repository: String,
    /// The tag, when the reference names one (default `latest` when it
    /// names neither a tag nor a digest).
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(image: &str) -> Result<Self, ReferenceError> {
        let invalid = |reason: &str| ReferenceError::Invalid {
            image: image.to_string(),
            reason: reason.to_string(),
        };
        if image.trim().is_empty() {
            return Err(ReferenceError::Empty(image.to_string()));
        }
        if image != image.trim() || image.chars().any(char::is_whitespace) {
            return Err(invalid("contains whitespace"));
        }
        let (rest, digest) = match image.split_once('@') {
            Some((rest, digest)) => (
                rest,
                Some(
                    Digest::parse(digest).map_err(|source| ReferenceError::Digest {
                        image: image.to_string(),
                        source,
                    })?,
                ),
            ),
            None => (image, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':'
        // before it is a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag
            && (tag.is_empty()
                || tag.len() > 128
                || !tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                || tag.starts_with(['.', '-']))
        {
            return Err(invalid(&format!(
                "tag {tag:?}: [A-Za-z0-9_.-], up to 128, not starting with . or -"
            )));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || repository.split('/').any(|part| {
                part.is_empty()
                    || !part.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                    })
                    || part.starts_with(['.', '_', '-'])
                    || part.ends_with(['.', '_', '-'])
            })
        {
            return Err(invalid(&format!(
                "repository {repository:?}: lowercase letters, digits and separators (. _ -), in /-separated parts"
            )));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry's manifest endpoint for: the digest when
    /// there is one (it pins the image), else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The host (and port) serving the registry API.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// `registry/repository`, the name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_docker_hub_library_images() {
        let r = Reference::parse("busybox").expect("parses");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = Reference::parse("team/app:1.2").expect("parses");
        assert_eq!(r.to_string(), "docker.io/team/app:1.2");
    }

    #[test]
    fn registries_ports_tags_and_digests() {
        let r = Reference::parse("127.0.0.1:5000/web:1").expect("parses");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "web", Some("1"))
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost:5000/a/b@{digest}")).expect("parses");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), digest);
        let r = Reference::parse("localhost:5000/web").expect("parses");
        assert_eq!(r.manifest_reference(), "latest");
    }

    #[test]
    fn bad_references_say_why() {
        assert!(matches!(
            Reference::parse(""),
            Err(ReferenceError::Empty(_))
        ));
        let error = Reference::parse("Busybox").expect_err("uppercase");
        assert!(
            error.to_string().contains("repository \"library/Busybox\""),
            "{error}"
        );
        let error = Reference::parse("busybox:").expect_err("empty tag");
        assert!(error.to_string().contains("tag \"\""), "{error}");
        let error = Reference::parse("busybox@sha256:xyz").expect_err("bad digest");
        assert!(error.to_string().contains("sha256"), "{error}");
    }
}
