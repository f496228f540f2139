//! Processes exec'd into a pod's running containers (the shim's side).
//!
//! libcontainer's tenant builder joins the container's namespaces and
//! cgroup; the process it runs is the container's own process section
//! (user, environment, working directory, capabilities, no_new_privs)
//! with other arguments. libcontainer 0.7 drops the container's seccomp
//! filter for a tenant, so the executor here loads it again right
//! before exec, as runc does for `runc exec` (which is why an exec'd
//! process always runs with no_new_privs; see `start`).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

use super::protocol::Response;

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

struct Record {
    pid: i32,
    exit_code: Option<i32>,
    finished: Option<Instant>,
    waiters: Vec<mpsc::Sender<Response>>,
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

    /// Starts a process in `container` (running); its host pid.
    pub fn start(
        &mut self,
        state_root: &Path,
        container: &Container,
        start: ExecStart,
    ) -> Result<i32, String> {
        self.forget_unclaimed();
        let ExecStart {
            exec_id,
            args,
            stdin,
            console_socket,
            fds,
        } = start;
        if exec_id.is_empty()
            || exec_id.len() > 64
            || !exec_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!("exec id {exec_id:?}: letters, digits and '-' only"));
        }
        if self.records.contains_key(&exec_id) {
            return Err(format!("exec {exec_id} exists"));
        }
        if args.is_empty() {
            return Err("exec: no command".into());
        }
        let bundle = container.bundle();
        let config: serde_json::Value = std::fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| format!("{}: no readable config.json", bundle.display()))?;
        let mut process = config["process"].clone();
        if !process.is_object() {
            return Err(format!("{}: no process section", bundle.display()));
        }
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(console_socket.is_some());
        let seccomp: Option<LinuxSeccomp> = match &config["linux"]["seccomp"] {
            serde_json::Value::Null => None,
            value => Some(
                serde_json::from_value(value.clone())
                    .map_err(|e| format!("{}: linux.seccomp: {e}", bundle.display()))?,
            ),
        };
        if seccomp.is_some() {
            // The filter is loaded after the capabilities are dropped, which
            // the kernel allows only under no_new_privs: an exec'd process
            // always has it (setuid programs do not elevate it), rather
            // than running without the container's filter.
            process["noNewPrivileges"] = serde_json::json!(true);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let process_file = self.dir.join(format!("{exec_id}.json"));
        std::fs::write(
            &process_file,
            serde_json::to_vec(&process).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("{}: {e}", process_file.display()))?;

        let mut builder = ContainerBuilder::new(container.id().to_string(), SyscallType::Linux)
            .with_executor(SeccompExecutor { seccomp })
            .with_root_path(state_root)
            .map_err(|e| format!("state root: {e}"))?;
        match console_socket {
            Some(socket) => {
                if !fds.is_empty() {
                    return Err("exec: descriptors sent with a terminal".into());
                }
                builder = builder.with_console_socket(Some(socket));
            }
            None => {
                let expected = if stdin { 3 } else { 2 };
                if fds.len() != expected {
                    return Err(format!(
                        "exec: {} descriptors sent, {expected} expected",
                        fds.len()
                    ));
                }
                let mut fds = fds.into_iter();
                let input = match stdin {
                    true => fds.next(),
                    false => std::fs::File::open("/dev/null").ok().map(OwnedFd::from),
                };
                let (Some(input), Some(output), Some(errors)) = (input, fds.next(), fds.next())
                else {
                    return Err("exec: missing descriptors".into());
                };
                builder = builder
                    .with_stdin(input)
                    .with_stdout(output)
                    .with_stderr(errors);
            }
        }
        let started = builder
            .as_tenant()
            .with_process(Some(&process_file))
            .with_detach(true)
            .build();
        let _ = std::fs::remove_file(&process_file);
        let pid = started
            .map_err(|e| format!("exec in {}: {e}", container.id()))?
            .as_raw();
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
                let _ = waiter.send(Response::Exited { exit_code });
            }
        }
    }

    /// Answers `reply` once `exec_id` has exited (now, if it has).
    pub fn wait(&mut self, exec_id: &str, reply: mpsc::Sender<Response>) {
        match self.records.get_mut(exec_id) {
            None => {
                let _ = reply.send(Response::Error {
                    message: format!("no exec {exec_id}"),
                });
            }
            Some(record) => match record.exit_code {
                Some(exit_code) => {
                    let _ = reply.send(Response::Exited { exit_code });
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

/// Loads the container's seccomp filter, then runs the process as
/// libcontainer's default executor does.
#[derive(Clone)]
struct SeccompExecutor {
    seccomp: Option<LinuxSeccomp>,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(seccomp) = &self.seccomp {
            libcontainer::seccomp::initialize_seccomp(seccomp)
                .map_err(|e| ExecutorError::Other(format!("loading the seccomp filter: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
