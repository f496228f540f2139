//! The agent's side of a shim's socket.

use std::io::{BufRead as _, BufReader};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::protocol::{ContainerState, Request, Response};
use super::wire::send_line;

#[derive(Debug, Error)]
pub enum ShimClientError {
    #[error("shim {}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shim {}: unreadable answer {answer:?}: {source}", socket.display())]
    Answer {
        socket: PathBuf,
        answer: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("shim: {0}")]
    Refused(String),
}

/// The socket of the shim of the pod in `pod_dir`.
pub fn socket_path(pod_dir: &Path) -> PathBuf {
    pod_dir.join("shim.sock")
}

pub struct ShimClient {
    socket: PathBuf,
}

impl ShimClient {
    pub fn new(pod_dir: &Path) -> Self {
        Self {
            socket: socket_path(pod_dir),
        }
    }

    /// Sends one request (a connection each: the shim may have been
    /// restarted between two calls).
    pub fn call(&self, request: &Request) -> Result<Response, ShimClientError> {
        self.call_with(request, &[], Some(Duration::from_secs(30)))
    }

    /// Sends one request with `fds` attached, waiting at most `timeout`
    /// (None: as long as it takes, for an exec's exit) for the answer.
    pub fn call_with(
        &self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> Result<Response, ShimClientError> {
        let io = |source| ShimClientError::Io {
            socket: self.socket.clone(),
            source,
        };
        let stream = UnixStream::connect(&self.socket).map_err(io)?;
        stream.set_read_timeout(timeout).map_err(io)?;
        let line =
            serde_json::to_string(request).map_err(|e| ShimClientError::Refused(e.to_string()))?;
        send_line(&stream, &line, fds).map_err(io)?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).map_err(io)?;
        let response: Response =
            serde_json::from_str(answer.trim()).map_err(|source| ShimClientError::Answer {
                socket: self.socket.clone(),
                answer: answer.clone(),
                source,
            })?;
        match response {
            Response::Error { message } => Err(ShimClientError::Refused(message)),
            other => Ok(other),
        }
    }

    pub fn state(&self) -> Result<Vec<ContainerState>, ShimClientError> {
        match self.call(&Request::State)? {
            Response::State { containers } => Ok(containers),
            other => Err(ShimClientError::Refused(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Container `id` once it has exited, waiting at most `timeout` (None:
    /// as long as it takes).
    pub fn wait(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<ContainerState, ShimClientError> {
        let request = Request::Wait { id: id.to_string() };
        match self.call_with(&request, &[], timeout)? {
            Response::State { mut containers } if containers.len() == 1 => Ok(containers.remove(0)),
            other => Err(ShimClientError::Refused(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// The ids of the containers running now (none when the shim does not
    /// answer).
    pub fn running(&self) -> Vec<String> {
        self.state()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.status == super::protocol::Status::Running)
            .map(|c| c.id)
            .collect()
    }

    /// Whether a shim answers on the socket.
    pub fn alive(&self) -> bool {
        self.state().is_ok()
    }
}
