//! The control plane of a test cluster: its replicas started, killed,
//! restarted and replaced from a backup, orchctl's config, and the
//! bootstrap token the nodes join with.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    Cluster, Daemon, HEALTH_PORT, Replica, http_get_in, log_file, must, output_in, spawn_in,
};

impl Cluster {
    /// Starts replica `index` (again, after a kill: same directory, same
    /// addresses) and waits until it answers /readyz.
    pub fn start_replica(&mut self, index: usize) {
        let first = &self.replicas[0];
        let (first_raft, first_pki) = (first.raft(), first.dir.join("pki"));
        let replica = &self.replicas[index];
        let mut command = Command::new(&self.bins.orch_control);
        command
            .args(["--node-id", &replica.id.to_string(), "--data-dir"])
            .arg(&replica.dir)
            .args(["--listen", &replica.raft(), "--api-listen", &replica.api()])
            .args([
                "--health-listen",
                &format!("{}:{HEALTH_PORT}", replica.address),
            ])
            .args(&self.spec.control_plane_args);
        // A replica's first start writes its peer certificate: before
        // that, the first replica bootstraps the cluster (with the CA it
        // was given, if any) and the others join it, bringing its CA.
        let pki = replica.dir.join("pki");
        if !pki.join("peer.crt").exists() {
            if index == 0 {
                command.arg("--init");
            } else {
                std::fs::create_dir_all(&pki).expect("pki dir");
                for file in ["ca.crt", "ca.key"] {
                    std::fs::copy(first_pki.join(file), pki.join(file)).expect("copy the CA");
                }
                command.args(["--join", &first_raft]);
            }
        }
        let log = log_file(&replica.dir.with_extension("log"));
        command
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = spawn_in(&replica.netns, command);
        self.replicas[index].process = Some(Daemon(child));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let replica = &mut self.replicas[index];
            if let Some(exited) = replica.process.as_mut().and_then(Daemon::exited) {
                panic!(
                    "replica {} exited ({exited}): {}",
                    replica.id,
                    std::fs::read_to_string(replica.dir.with_extension("log")).unwrap_or_default()
                );
            }
            let replica = &self.replicas[index];
            if http_get_in(&self.client, replica.address, HEALTH_PORT, "/readyz").is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} was not ready within 60 s: {}",
                replica.id,
                std::fs::read_to_string(replica.dir.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The index of the replica that is the Raft leader, by its own
    /// word (`orch_raft_is_leader` on its health port).
    pub fn leader(&self) -> Option<usize> {
        self.replicas.iter().position(|replica| {
            replica.process.is_some()
                && http_get_in(&self.client, replica.address, HEALTH_PORT, "/metrics").is_ok_and(
                    |metrics| {
                        metrics
                            .lines()
                            .any(|line| line.split_whitespace().eq(["orch_raft_is_leader", "1"]))
                    },
                )
        })
    }

    /// Kills replica `index` (SIGKILL).
    pub fn kill_replica(&mut self, index: usize) {
        self.replicas[index].process = None;
    }

    /// Replaces the whole control plane with one restored from
    /// `snapshot` (`orchctl snapshot save`), as an operator does after
    /// losing it: every replica killed and its data directory deleted (the
    /// cluster CA kept aside, as an operator keeps the PKI with the
    /// backup); the first rebuilt by `orch-control restore` and started
    /// with `--init`, the others joining it. The addresses stay, so the
    /// nodes' and orchctl's configs still hold.
    pub fn replace_control_plane(&mut self, snapshot: &Path) {
        let kept = self.dir.join("kept-ca");
        std::fs::create_dir_all(&kept).expect("a directory for the CA");
        for file in ["ca.crt", "ca.key"] {
            std::fs::copy(self.replicas[0].dir.join("pki").join(file), kept.join(file))
                .expect("keep the CA");
        }
        for replica in &mut self.replicas {
            replica.process = None;
            std::fs::remove_dir_all(&replica.dir).expect("remove a replica's data");
        }
        let first = &self.replicas[0].dir;
        must(
            Command::new(&self.bins.orch_control)
                .arg("restore")
                .arg(snapshot)
                .arg("--data-dir")
                .arg(first),
        );
        let pki = first.join("pki");
        std::fs::create_dir_all(&pki).expect("pki dir");
        for file in ["ca.crt", "ca.key"] {
            std::fs::copy(kept.join(file), pki.join(file)).expect("restore the CA");
        }
        for index in 0..self.replicas.len() {
            self.start_replica(index);
        }
    }

    /// An admin config naming every replica's API.
    pub(super) fn write_admin_config(&self) {
        let written = self.replicas[0].dir.join("pki").join("admin.conf");
        let mut config = orch_core::api::config::ClientConfig::load(&written)
            .unwrap_or_else(|e| panic!("{}: {e}", written.display()));
        config.servers = self.replicas.iter().map(Replica::api).collect();
        std::fs::write(&self.admin_config, config.to_yaml()).expect("admin config");
    }

    /// `orch-control token create ARGS` as an operator runs it, on the
    /// first replica's host (whose API it reaches): its output.
    pub fn token_create(&self, args: &[&str]) -> String {
        let mut command = Command::new(&self.bins.orch_control);
        command
            .args(["token", "create", "--data-dir"])
            .arg(&self.replicas[0].dir)
            .args(args)
            .env_remove("RUST_BACKTRACE");
        let output = output_in(&self.replicas[0].netns, command);
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "orch-control token create: {printed}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        printed
    }

    /// The nodes' join flags: a bootstrap token, the CA pin, and every
    /// replica's API address.
    pub(super) fn join_command(&self) -> Vec<String> {
        let printed = self.token_create(&["--print-join-command"]);
        // orch-node --join SERVER --token T --ca-cert-hash H
        let words: Vec<&str> = printed.split_whitespace().collect();
        let after = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
                .unwrap_or_else(|| panic!("{flag} in {printed:?}"))
                .to_string()
        };
        let servers: Vec<String> = self.replicas.iter().map(Replica::api).collect();
        vec![
            "--join".into(),
            servers.join(","),
            "--token".into(),
            after("--token"),
            "--ca-cert-hash".into(),
            after("--ca-cert-hash"),
        ]
    }
}
