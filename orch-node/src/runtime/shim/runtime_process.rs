//! The shim's side of `orch-runtime` (`calls`): starting one from the
//! sealed copy the agent handed the shim, and exchanging a call and its
//! answers over a socket pair.

use std::os::fd::{BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::protocol::{Response, RuntimeCall};
use super::wire::{LineReader, send_line};

/// How long a runtime call may go unanswered unless the shim is told
/// otherwise: under the 30 s the agent waits for a shim's answer, so the
/// shim answers (with this failure) before the agent gives up on it and
/// takes it for dead. A create takes milliseconds, ~2 s at worst with 100
/// pods starting at once.
pub const DEFAULT_CALL_LIMIT: Duration = Duration::from_secs(20);

/// The sealed orch-runtime a shim runs its libcontainer calls with:
/// a descriptor it inherited from whoever started it, held for its life.
pub struct RuntimeBinary {
    file: OwnedFd,
    /// How long a call may go unanswered before its runtime process is
    /// killed: a call stuck in the kernel or in a hook must not stop the
    /// shim serving its other containers for good.
    call_limit: Duration,
}

impl RuntimeBinary {
    /// Takes descriptor `fd` (inherited), made close-on-exec here so no
    /// container or runtime process inherits it in turn. On stdin (0, as
    /// the agent hands it) it moves to a descriptor of its own and stdin
    /// becomes /dev/null.
    pub fn inherited(fd: RawFd, call_limit: Duration) -> Result<Self, String> {
        use nix::libc;
        if fd == 1 || fd == 2 || fd < 0 {
            return Err(format!(
                "--runtime-fd {fd}: stdin or a descriptor above stderr"
            ));
        }
        let failed = |what: &str| {
            format!(
                "--runtime-fd {fd}: {what}: {}",
                std::io::Error::last_os_error()
            )
        };
        let own = if fd == 0 {
            // SAFETY: fcntl duplicates a descriptor number; nothing is
            // dereferenced.
            let moved = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
            if moved < 0 {
                return Err(failed("moving it off stdin"));
            }
            let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
            nix::unistd::dup2_stdin(&null).map_err(|e| format!("/dev/null as stdin: {e}"))?;
            moved
        } else {
            // SAFETY: as above; only the descriptor's flags change.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
                return Err(failed("close-on-exec"));
            }
            fd
        };
        // SAFETY: open (checked above) and passed for this use alone;
        // nothing else in the shim owns it.
        let file = unsafe { OwnedFd::from_raw_fd(own) };
        Ok(Self { file, call_limit })
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
    /// Its pid, which is also its process group's id.
    pid: i32,
    call_limit: Duration,
}

impl RuntimeProcess {
    /// Starts it, in a process group of its own (so that a hung call is
    /// killed with whatever it started, such as a hook). Its stderr is the
    /// shim's (the shim's log); the shim's reaper collects it when it
    /// exits.
    pub fn start(binary: &RuntimeBinary) -> Result<Self, String> {
        let (control, theirs) =
            UnixStream::pair().map_err(|e| format!("a socket pair for orch-runtime: {e}"))?;
        let child = Command::new(binary.path())
            .arg0("orch-runtime")
            .process_group(0)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting orch-runtime: {e}"))?;
        let pid = i32::try_from(child.id()).map_err(|_| "orch-runtime: pid out of range")?;
        Ok(Self {
            control,
            reader: LineReader::new(),
            pid,
            call_limit: binary.call_limit,
        })
    }

    /// The next line from orch-runtime, within the call limit.
    fn answer(&mut self) -> std::io::Result<Option<(String, Vec<OwnedFd>)>> {
        let deadline = std::time::Instant::now() + self.call_limit;
        self.reader.next_within(&self.control, deadline)
    }

    /// Sends `call` with `fds` and reads its answer; an `Error` answer is
    /// an `Err`.
    pub fn call(&mut self, call: &RuntimeCall, fds: &[BorrowedFd<'_>]) -> Result<Response, String> {
        let line = serde_json::to_string(call).map_err(|e| e.to_string())?;
        send_line(&self.control, &line, fds).map_err(|e| format!("calling orch-runtime: {e}"))?;
        let answer = match self.answer() {
            Ok(answer) => answer,
            Err(error) => {
                // Unanswered, or unreadable: either way it is killed with
                // its process group (orch-runtime and what it started in
                // it, such as a hook). The container's own processes are
                // the caller's to clean up (a failed create does).
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(self.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) {
                        format!(
                            "orch-runtime did not answer within {}s (killed)",
                            self.call_limit.as_secs()
                        )
                    } else {
                        format!("reading orch-runtime's answer: {error} (killed it)")
                    },
                );
            }
        }
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
