//! The shim's side of `orch-runtime` (`calls`): starting one from the
//! sealed copy the agent handed the shim, and exchanging a call and its
//! answers over a socket pair.

use std::os::fd::{BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::protocol::{Response, RuntimeCall};
use super::wire::{LineReader, send_line};

/// The sealed orch-runtime a shim runs its libcontainer calls with:
/// a descriptor it inherited from whoever started it, held for its life.
pub struct RuntimeBinary {
    file: OwnedFd,
}

impl RuntimeBinary {
    /// Takes descriptor `fd` (inherited; made close-on-exec here, so no
    /// container or runtime process inherits it in turn).
    pub fn inherited(fd: RawFd) -> Result<Self, String> {
        if fd < 3 {
            return Err(format!("--runtime-fd {fd}: not a descriptor of its own"));
        }
        // SAFETY: fcntl on a number only inspects the descriptor table.
        if unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC) } < 0 {
            return Err(format!(
                "--runtime-fd {fd}: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: open (checked above) and passed for this use alone;
        // nothing else in the shim owns it.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { file })
    }

    /// The path that executes it: valid while the shim holds the
    /// descriptor (a child opens it at exec, before close-on-exec).
    fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd as _;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// One `orch-runtime` process, running or exited.
pub struct RuntimeProcess {
    control: UnixStream,
    reader: LineReader,
}

impl RuntimeProcess {
    /// Starts it. Its stderr is the shim's (the shim's log); the shim's
    /// reaper collects it when it exits.
    pub fn start(binary: &RuntimeBinary) -> Result<Self, String> {
        let (control, theirs) =
            UnixStream::pair().map_err(|e| format!("a socket pair for orch-runtime: {e}"))?;
        Command::new(binary.path())
            .arg0("orch-runtime")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting orch-runtime: {e}"))?;
        Ok(Self {
            control,
            reader: LineReader::new(),
        })
    }

    /// Sends `call` with `fds` and reads its answer; an `Error` answer is
    /// an `Err`.
    pub fn call(&mut self, call: &RuntimeCall, fds: &[BorrowedFd<'_>]) -> Result<Response, String> {
        let line = serde_json::to_string(call).map_err(|e| e.to_string())?;
        send_line(&self.control, &line, fds).map_err(|e| format!("calling orch-runtime: {e}"))?;
        let answer = self
            .reader
            .next(&self.control)
            .map_err(|e| format!("reading orch-runtime's answer: {e}"))?
            .ok_or_else(|| {
                "orch-runtime exited without an answer (its error is in shim.log)".to_string()
            })?;
        match serde_json::from_str(&answer.0) {
            Ok(Response::Error { message }) => Err(message),
            Ok(response) => Ok(response),
            Err(error) => Err(format!("orch-runtime answered {:?}: {error}", answer.0)),
        }
    }
}
