//! What the agent and a pod's shim say to each other over the shim's unix
//! socket: one JSON request per line, one JSON response per line.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Creates container `id` from the OCI bundle (config.json + rootfs)
    /// at `bundle`; its stdout and stderr go to `log` (CRI format),
    /// rotated as `log_rotation` says (never when absent).
    Create {
        id: String,
        bundle: PathBuf,
        log: PathBuf,
        #[serde(default)]
        log_rotation: Option<LogRotation>,
    },
    Start {
        id: String,
    },
    /// Sends `signal` to every process of the container.
    Kill {
        id: String,
        signal: i32,
    },
    /// Removes a stopped (or, forced, a running) container's state and cgroup.
    Delete {
        id: String,
    },
    /// Runs `args` in running container `id`'s namespaces and cgroup,
    /// with its user, environment, working directory, capabilities and
    /// seccomp filter (like `runc exec`). Its stdio: with
    /// `console_socket`, a new terminal whose master end is sent to that
    /// socket; otherwise the descriptors sent with this request, in the
    /// order stdin (when `stdin`), stdout, stderr. Answers `Started`.
    Exec {
        id: String,
        exec_id: String,
        args: Vec<String>,
        stdin: bool,
        console_socket: Option<PathBuf>,
    },
    /// Answers `Exited` once the process of `exec_id` has exited.
    ExecWait {
        exec_id: String,
    },
    /// Sends `signal` to the process of `exec_id` unless it has exited.
    ExecKill {
        exec_id: String,
        signal: i32,
    },
    /// Answers `State` with container `id` alone once it has exited (at
    /// once if it has), like containerd's shim Wait.
    Wait {
        id: String,
    },
    /// Every container the shim holds.
    State,
    /// The shim exits once it holds no running container.
    Shutdown,
}

/// What a shim asks of the `orch-runtime` process it starts for
/// each libcontainer call (the shim itself does not link libcontainer, so
/// it stays small), over the socket that process has as its stdin. It
/// answers each with a `Response`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum RuntimeCall {
    /// Creates container `id` from the bundle, its stdin, stdout and
    /// stderr the descriptors sent with the call; answers `Started` with
    /// its init's pid, then waits for `Start` or `Delete` (or the end of
    /// the socket, which deletes it).
    Create {
        state_root: PathBuf,
        id: String,
        bundle: PathBuf,
    },
    /// Starts container `id`: the one the process just created, or (sent
    /// to a new process, after a start failed) one created earlier. The
    /// process exits after it.
    Start { state_root: PathBuf, id: String },
    /// Deletes container `id`, killing it first if it runs.
    Delete { state_root: PathBuf, id: String },
    /// Runs `args` in running container `id` like `Request::Exec` (the
    /// process description is written under `exec_dir`); answers
    /// `Started` with its pid.
    Exec {
        state_root: PathBuf,
        id: String,
        exec_dir: PathBuf,
        exec_id: String,
        args: Vec<String>,
        stdin: bool,
        console_socket: Option<PathBuf>,
    },
}

/// When a container's log file is rotated, and how many files are kept
/// (the live one included), like the kubelet's containerLogMaxSize and
/// containerLogMaxFiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRotation {
    pub max_bytes: u64,
    pub max_files: u32,
}

impl Default for LogRotation {
    /// The kubelet's defaults: 10 MiB, 5 files.
    fn default() -> Self {
        Self {
            max_bytes: 10 << 20,
            max_files: 5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Created,
    Running,
    Exited,
}

/// A container as the shim knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub status: Status,
    pub pid: Option<i32>,
    /// The exit code; 128 + the signal for a process killed by one.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did (an exit code above 128
    /// alone does not say so: a process may exit with 130 itself).
    #[serde(default)]
    pub signal: Option<i32>,
    /// Unix seconds (with fraction).
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    /// Whether the kernel's OOM killer ended it (its cgroup says so).
    pub oom_killed: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    State {
        containers: Vec<ContainerState>,
    },
    Started {
        pid: i32,
    },
    /// An exec'd process's exit code (128 + the signal that ended it).
    Exited {
        exit_code: i32,
    },
    Error {
        message: String,
    },
}
