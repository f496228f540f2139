//! A registry on loopback for tests and the demo cluster: Debian's
//! `docker-registry` with its storage in a directory of the caller's,
//! stopped (and its storage left to the caller) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

pub struct LocalRegistry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    pub storage: PathBuf,
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalRegistry {
    /// Starts a registry with its config, storage and log under `dir`.
    pub fn start(dir: &Path) -> Result<Self, String> {
        Self::start_with_htpasswd(dir, None)
    }

    /// Starts a registry that takes only the users of `htpasswd` (the
    /// file's contents: `user:<bcrypt hash>` lines), by basic auth.
    pub fn start_with_htpasswd(dir: &Path, htpasswd: Option<&str>) -> Result<Self, String> {
        if !Path::new(DOCKER_REGISTRY).exists() {
            return Err(format!(
                "{DOCKER_REGISTRY} is missing: run `cargo xtask setup` (Debian's docker-registry)"
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let storage = dir.join("registry-storage");
        let log = dir.join("registry.log");
        for _ in 0..5 {
            // A free port, given back just before the registry binds it
            // (tried again if someone else took it meanwhile).
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("finding a free port: {e}"))?
                .port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.join("registry.yml");
            let mut text = format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp: {{addr: {addr}}}\n",
                storage.display()
            );
            if let Some(users) = htpasswd {
                let path = dir.join("htpasswd");
                std::fs::write(&path, users).map_err(|e| format!("{}: {e}", path.display()))?;
                text.push_str(&format!(
                    "auth:\n  htpasswd: {{realm: orch, path: {}}}\n",
                    path.display()
                ));
            }
            std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
            let child = Command::new(DOCKER_REGISTRY)
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?)
                .spawn()
                .map_err(|e| format!("starting {DOCKER_REGISTRY}: {e}"))?;
            let mut registry = Self {
                child,
                addr,
                storage: storage.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = registry.child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(&registry.addr).is_ok() {
                    return Ok(registry);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(registry);
        }
        Err(format!(
            "docker-registry did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ))
    }
}
