//! Running a process in a pod's container through the pod's shim (the
//! agent's side): exec probes and `orchctl exec`. Its stdio is either
//! pipes this process holds the other ends of, or a terminal whose master
//! end this process receives.

use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::shim::client::{ShimClient, ShimClientError};
use super::shim::protocol::{Request, Response};
use super::shim::wire::receive_fd;

#[derive(Debug, Error)]
pub enum ExecError {
    #[error(transparent)]
    Shim(#[from] ShimClientError),
    #[error("exec: {0}")]
    Io(String),
}

/// The agent's ends of an exec'd process's stdio.
pub enum ExecIo {
    Pipes {
        /// Writing end of its stdin, when it was asked for.
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A terminal (stdin, stdout and stderr in one).
    Terminal { master: OwnedFd },
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ExecOptions {
    pub stdin: bool,
    pub tty: bool,
}

/// A started exec'd process.
pub struct ExecProcess {
    shim: ShimClient,
    pub exec_id: String,
    pub pid: i32,
}

/// Where the agent listens for terminals' master ends (root only).
const CONSOLE_SOCKETS: &str = "/run/orch-exec";

fn new_exec_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{:x}-{:x}-{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ExecError {
    move |error| ExecError::Io(format!("{context}: {error}"))
}

/// Starts `args` in the running container `container_id` of the pod whose
/// directory is `pod_dir`. Blocking.
pub fn start(
    pod_dir: &Path,
    container_id: &str,
    args: Vec<String>,
    options: ExecOptions,
) -> Result<(ExecProcess, ExecIo), ExecError> {
    let shim = ShimClient::new(pod_dir);
    let exec_id = new_exec_id();
    let request = |console_socket: Option<PathBuf>| Request::Exec {
        id: container_id.to_string(),
        exec_id: exec_id.clone(),
        args: args.clone(),
        stdin: options.stdin && !options.tty,
        console_socket,
    };
    let started = |response: Response| match response {
        Response::Started { pid } => Ok(pid),
        other => Err(ExecError::Io(format!("unexpected answer {other:?}"))),
    };
    if options.tty {
        // Not under the pod's directory: a unix socket's path must fit
        // in 108 bytes, whatever --state-dir is.
        let dir = Path::new(CONSOLE_SOCKETS);
        std::fs::create_dir_all(dir).map_err(io(dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir.display()))?;
        }
        let socket = dir.join(format!("{exec_id}.sock"));
        let listener = UnixListener::bind(&socket).map_err(io(socket.display()))?;
        let received = shim
            .call(&request(Some(socket.clone())))
            .map_err(ExecError::from)
            .and_then(started)
            .and_then(|pid| {
                let stream = accept_within(&listener, Duration::from_secs(5))
                    .map_err(io("the terminal's console socket"))?;
                let master = receive_fd(&stream).map_err(io("the terminal's master"))?;
                Ok((pid, master))
            });
        let _ = std::fs::remove_file(&socket);
        let (pid, master) = received?;
        return Ok((
            ExecProcess { shim, exec_id, pid },
            ExecIo::Terminal { master },
        ));
    }
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| ExecError::Io(format!("pipe: {e}")))
    };
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let (stdin_write, response) = if options.stdin {
        let (stdin_read, stdin_write) = pipe()?;
        let sent = [
            stdin_read.as_fd(),
            stdout_write.as_fd(),
            stderr_write.as_fd(),
        ];
        let response = shim.call_with(&request(None), &sent, Some(Duration::from_secs(30)))?;
        (Some(stdin_write), response)
    } else {
        let sent = [stdout_write.as_fd(), stderr_write.as_fd()];
        let response = shim.call_with(&request(None), &sent, Some(Duration::from_secs(30)))?;
        (None, response)
    };
    // The process holds the other ends now: only its exit closes them.
    drop(stdout_write);
    drop(stderr_write);
    let pid = started(response)?;
    Ok((
        ExecProcess { shim, exec_id, pid },
        ExecIo::Pipes {
            stdin: stdin_write,
            stdout: stdout_read,
            stderr: stderr_read,
        },
    ))
}

fn accept_within(
    listener: &UnixListener,
    timeout: Duration,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(timeout))?;
                return Ok(stream);
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the process never connected",
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => return Err(error),
        }
    }
}

impl ExecProcess {
    /// Blocks until the process exits; its exit code (128 + signal).
    pub fn wait(&self) -> Result<i32, ExecError> {
        let request = Request::ExecWait {
            exec_id: self.exec_id.clone(),
        };
        match self.shim.call_with(&request, &[], None)? {
            Response::Exited { exit_code } => Ok(exit_code),
            other => Err(ExecError::Io(format!("unexpected answer {other:?}"))),
        }
    }

    /// Signals the process unless it has exited.
    pub fn kill(&self, signal: i32) -> Result<(), ExecError> {
        self.shim.call(&Request::ExecKill {
            exec_id: self.exec_id.clone(),
            signal,
        })?;
        Ok(())
    }
}
