//! Each pod's shim: started by the agent (it puts itself in a session of
//! its own, so it outlives the agent and its signals), moved into the
//! service cgroup right after the spawn (before it is sent any request,
//! so before it starts any container), and awaited until its socket
//! listens.

use std::path::Path;
use std::time::Duration;

use super::pods::{PodManager, blocking};
use crate::runtime::shim::client::ShimClient;

impl PodManager {
    /// Starts the pod's shim unless one is alive.
    pub(super) async fn ensure_shim(&self, dir: &Path) -> Result<(), String> {
        let probe = ShimClient::new(dir);
        if blocking(move || probe.alive()).await {
            return Ok(());
        }
        let log =
            std::fs::File::create(dir.join("shim.log")).map_err(|e| format!("shim log: {e}"))?;
        let mut command = self
            .shim_programs
            .shim_command(dir)
            .map_err(|e| format!("the sealed orch-runtime for the shim: {e}"))?;
        // The shim puts itself in a session of its own (it outlives the
        // agent and its signals).
        command.stdout(std::process::Stdio::piped()).stderr(log);
        let spawned = command.spawn();
        // The command holds a copy of the sealed orch-runtime descriptor.
        drop(command);
        let mut child = spawned.map_err(|e| format!("starting the shim: {e}"))?;
        if let Err(error) = self.plumbing.place_shim(child.id()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("moving the shim into the service cgroup: {error}"));
        }
        let stdout = child.stdout.take();
        // Reaped when it exits while the agent runs.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        // The shim says "ready" on its stdout once its socket listens.
        let ready = blocking(move || {
            let mut said = [0u8; 6];
            stdout.is_some_and(|mut out| {
                std::io::Read::read(&mut out, &mut said).is_ok_and(|n| n > 0)
            })
        });
        match tokio::time::timeout(Duration::from_secs(10), ready).await {
            Ok(true) => Ok(()),
            _ => Err(format!(
                "the shim did not start: {}",
                std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default()
            )),
        }
    }
}
