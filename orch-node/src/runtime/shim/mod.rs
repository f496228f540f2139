//! Pod shims: the per-pod process that runs the pod's containers through
//! libcontainer (`server`, `exec`), the agent's client of it, and their
//! protocol (`protocol`, framed by `wire`).

pub mod client;
pub mod exec;
pub mod logs;
pub mod protocol;
pub mod server;
pub mod wire;

/// One sealed in-memory copy of this program, which every shim the agent
/// starts runs from. A shim must never run from the file on disk (a
/// container that reached /proc/<shim>/exe could overwrite orch-node,
/// CVE-2019-5736); a copy made by each shim would cost a whole binary of
/// memory per pod, this one costs it once per agent.
pub struct SealedBinary {
    file: std::fs::File,
}

impl SealedBinary {
    pub fn of_current_exe() -> std::io::Result<Self> {
        let mut exe = std::fs::File::open("/proc/self/exe")?;
        let file = pentacle::SealOptions::new()
            .executable(true)
            .copy_and_seal(&mut exe)?;
        Ok(Self { file })
    }

    /// The path that runs it, valid in this process and in its children
    /// until they exec (the descriptor closes on exec, after the kernel
    /// opened the program).
    pub fn path(&self) -> std::path::PathBuf {
        use std::os::fd::AsRawFd as _;
        std::path::PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}
