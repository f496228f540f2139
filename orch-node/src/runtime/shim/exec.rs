//! Processes exec'd into a pod's running containers: the shim's records
//! of them (their pids, exit codes and who waits for them). Starting one
//! is an `orch-runtime` call (`exec_process`).

use std::collections::HashMap;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::protocol::{Response, RuntimeCall};
use super::runtime_process::{RuntimeBinary, RuntimeProcess};
use super::wire::Reply;

/// How long an exit code nobody asked for is kept.
const UNCLAIMED: Duration = Duration::from_secs(600);

pub struct ExecStart {
    pub exec_id: String,
    pub args: Vec<String>,
    pub stdin: bool,
    pub console_socket: Option<PathBuf>,
    /// stdin (when asked for), stdout, stderr; none with a terminal.
    pub fds: Vec<OwnedFd>,
}

impl ExecStart {
    /// An exec id names a file (letters, digits and '-' only), and there
    /// is a command. Checked by the shim, and again by orch-runtime,
    /// which writes that file.
    pub fn check(&self) -> Result<(), String> {
        let id = &self.exec_id;
        if id.is_empty()
            || id.len() > 64
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!("exec id {id:?}: letters, digits and '-' only"));
        }
        if self.args.is_empty() {
            return Err("exec: no command".into());
        }
        Ok(())
    }
}

struct Record {
    pid: i32,
    exit_code: Option<i32>,
    finished: Option<Instant>,
    waiters: Vec<Reply>,
}

/// The exec'd processes of one shim, by exec id.
pub struct Execs {
    dir: PathBuf,
    records: HashMap<String, Record>,
}

impl Execs {
    /// `dir` holds the process documents handed to libcontainer.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            records: HashMap::new(),
        }
    }

    /// Starts a process in running container `id` (through an
    /// `orch-runtime` call); its host pid.
    pub fn start(
        &mut self,
        runtime: &RuntimeBinary,
        state_root: &Path,
        id: &str,
        start: ExecStart,
    ) -> Result<i32, String> {
        self.forget_unclaimed();
        start.check()?;
        let ExecStart {
            exec_id,
            args,
            stdin,
            console_socket,
            fds,
        } = start;
        if self.records.contains_key(&exec_id) {
            return Err(format!("exec {exec_id} exists"));
        }
        let call = RuntimeCall::Exec {
            state_root: state_root.to_path_buf(),
            id: id.to_string(),
            exec_dir: self.dir.clone(),
            exec_id: exec_id.clone(),
            args,
            stdin,
            console_socket,
        };
        let sent: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        let pid = match RuntimeProcess::start(runtime)?.call(&call, &sent)? {
            Response::Started { pid } if pid > 0 => pid,
            other => return Err(format!("exec: unexpected answer {other:?}")),
        };
        self.records.insert(
            exec_id,
            Record {
                pid,
                exit_code: None,
                finished: None,
                waiters: Vec::new(),
            },
        );
        Ok(pid)
    }

    /// A reaped child: when it is an exec'd process, its exit code.
    pub fn exited(&mut self, pid: i32, exit_code: i32) {
        if let Some(record) = self
            .records
            .values_mut()
            .find(|r| r.exit_code.is_none() && r.pid == pid)
        {
            record.exit_code = Some(exit_code);
            record.finished = Some(Instant::now());
            for waiter in record.waiters.drain(..) {
                waiter.send(&Response::Exited { exit_code });
            }
        }
    }

    /// Answers `reply` once `exec_id` has exited (now, if it has).
    pub fn wait(&mut self, exec_id: &str, reply: Reply) {
        match self.records.get_mut(exec_id) {
            None => {
                reply.send(&Response::Error {
                    message: format!("no exec {exec_id}"),
                });
            }
            Some(record) => match record.exit_code {
                Some(exit_code) => {
                    reply.send(&Response::Exited { exit_code });
                }
                None => record.waiters.push(reply),
            },
        }
    }

    pub fn kill(&mut self, exec_id: &str, signal: i32) -> Result<(), String> {
        let record = self
            .records
            .get(exec_id)
            .ok_or_else(|| format!("no exec {exec_id}"))?;
        if record.exit_code.is_some() {
            return Ok(());
        }
        let signal = nix::sys::signal::Signal::try_from(signal)
            .map_err(|e| format!("signal {signal}: {e}"))?;
        // Not reaped yet, so the pid is still this process's.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(record.pid), signal)
            .map_err(|e| format!("signalling exec {exec_id}: {e}"))
    }

    /// Exit codes kept long after anyone could still ask for them.
    fn forget_unclaimed(&mut self) {
        self.records
            .retain(|_, r| r.finished.is_none_or(|at| at.elapsed() < UNCLAIMED));
    }
}
