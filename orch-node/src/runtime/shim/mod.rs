//! Pod shims: the per-pod process (`orch-shim`: `server`, `exec`) that
//! has libcontainer run the pod's containers in short-lived
//! `orch-runtime` processes (`calls`, `exec_process`; started by
//! `runtime_process`), the agent's client of it, and their protocol
//! (`protocol`, framed by `wire`).

pub mod calls;
pub mod client;
pub mod exec;
pub mod exec_process;
pub mod logs;
pub mod protocol;
pub mod runtime_process;
pub mod server;
pub mod wire;

use std::path::Path;
use std::process::Command;

/// How orch-shim and orch-runtime begin: from a sealed copy of
/// themselves (re-executing into one when run from a file; the
/// re-executed program keeps its inherited descriptors), logging to a
/// copy of stderr. A copy, because libcontainer logs from a container's
/// process too after making the container's stdio its fds 0-2: that way
/// none of it lands in a container's output. Debug lines with
/// `RUST_LOG=debug` (or trace), info otherwise: no filter expressions,
/// whose parser would be most of what these small programs map.
pub fn begin_sealed_with_log() -> Result<(), String> {
    pentacle::ensure_sealed().map_err(|e| format!("re-executing from a sealed memfd: {e}"))?;
    let log = std::os::fd::AsFd::as_fd(&std::io::stderr())
        .try_clone_to_owned()
        .map_err(|e| format!("duplicating stderr: {e}"))?;
    let level = match std::env::var("RUST_LOG").as_deref() {
        Ok("debug") | Ok("trace") => tracing::Level::DEBUG,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(std::sync::Arc::new(std::fs::File::from(log)))
        .init();
    Ok(())
}

/// A sealed in-memory copy of a program (orch-shim, orch-runtime), which
/// every process started from it runs. A
/// shim or a libcontainer caller must never run from the file on disk (a
/// container that reached /proc/<pid>/exe could overwrite it,
/// CVE-2019-5736); a copy made by each shim would cost a whole binary of
/// memory per pod, this one costs it once per agent.
pub struct SealedBinary {
    file: std::fs::File,
}

impl SealedBinary {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let mut program = std::fs::File::open(path)?;
        let file = pentacle::SealOptions::new()
            .executable(true)
            .copy_and_seal(&mut program)?;
        Ok(Self { file })
    }

    pub fn of_current_exe() -> std::io::Result<Self> {
        Self::of(Path::new("/proc/self/exe"))
    }

    /// The path that runs it, valid in this process and in its children
    /// until they exec (the descriptor closes on exec, after the kernel
    /// opened the program).
    pub fn path(&self) -> std::path::PathBuf {
        use std::os::fd::AsRawFd as _;
        std::path::PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// The two programs a node's shims run, sealed once per agent.
pub struct ShimPrograms {
    pub shim: SealedBinary,
    pub runtime: SealedBinary,
}

impl ShimPrograms {
    /// `orch-shim` and `orch-runtime` beside the orch-node at `orch_node`
    /// (installed in one directory, as cargo builds them).
    pub fn beside(orch_node: &Path) -> Result<Self, String> {
        let sealed = |name: &str| {
            let path = orch_node.with_file_name(name);
            SealedBinary::of(&path).map_err(|e| {
                format!(
                    "{}: {e} ({name} is installed beside orch-node)",
                    path.display()
                )
            })
        };
        Ok(Self {
            shim: sealed("orch-shim")?,
            runtime: sealed("orch-runtime")?,
        })
    }

    /// The command that starts the shim of the pod in `pod_dir`, handing
    /// it the sealed orch-runtime as its stdin (`--runtime-fd 0`; the shim
    /// moves it off stdin). Spawn it while `self` lives. Nothing runs in
    /// the child before the exec, so std spawns it with posix_spawn (a
    /// vfork) rather than a fork, which copied the agent's page tables and
    /// cost ~1.5 ms of the agent's CPU a pod.
    pub fn shim_command(&self, pod_dir: &Path) -> std::io::Result<Command> {
        use std::os::unix::process::CommandExt as _;
        let runtime = self.runtime.file.try_clone()?;
        let mut command = Command::new(self.shim.path());
        command
            .arg0("orch-shim")
            .arg("--pod-dir")
            .arg(pod_dir)
            .arg("--runtime-fd")
            .arg("0")
            .stdin(std::process::Stdio::from(runtime));
        Ok(command)
    }
}
