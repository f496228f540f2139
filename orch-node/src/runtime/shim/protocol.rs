//! What the agent and a pod's shim say to each other over the shim's unix
//! socket: one JSON request per line, one JSON response per line.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Creates container `id` from the OCI bundle (config.json + rootfs)
    /// at `bundle`; its stdout and stderr go to `log` (CRI format).
    Create {
        id: String,
        bundle: PathBuf,
        log: PathBuf,
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
    /// Every container the shim holds.
    State,
    /// The shim exits once it holds no running container.
    Shutdown,
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
    State { containers: Vec<ContainerState> },
    Error { message: String },
}
