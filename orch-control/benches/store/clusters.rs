//! The two systems under measurement, as real processes on loopback with
//! temporary data directories: orch-control replicas and etcd members.
//! Both get the same Raft timing (heartbeat 100 ms, election timeout
//! 500 ms; each randomizes elections up to twice that) and the same
//! transport security: mutual TLS on client and peer ports, as orch's
//! replication port always is and as Kubernetes runs etcd (kubeadm sets
//! `--client-cert-auth` and `--peer-client-cert-auth`). A plaintext etcd
//! would be measured without the encryption orch pays for.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use orch_control::store::raft::client::replica_status;
use orch_control::store::raft::peer_tls::PeerTls;

const ORCH_CONTROL: &str = env!("CARGO_BIN_EXE_orch-control");
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_MS: u64 = 500;

/// A running process, killed (SIGKILL) when dropped.
pub struct Process {
    child: Child,
    /// Held open so the process never writes to a closed pipe.
    stdout: Option<BufReader<ChildStdout>>,
}

impl Process {
    /// Takes `child`, and its stdout when that is a pipe: from here on an
    /// error that drops it kills the process.
    pub fn new(mut child: Child) -> Self {
        let stdout = child.stdout.take().map(BufReader::new);
        Self { child, stdout }
    }

    /// The next line the process writes on its stdout.
    pub fn read_line(&mut self) -> Result<String> {
        let stdout = self
            .stdout
            .as_mut()
            .context("the process's stdout is not a pipe")?;
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        Ok(line)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `Field: N kB` figure of a /proc file (`status`, `smaps_rollup`), in
/// bytes.
pub fn proc_bytes(pid: u32, file: &str, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
    let kib = text
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .with_context(|| format!("no {field} in /proc/PID/{file}"))?;
    Ok(kib * 1024)
}

/// Resident memory of `pid` in bytes (VmRSS).
pub fn resident_bytes(pid: u32) -> Result<u64> {
    proc_bytes(pid, "status", "VmRSS")
}

async fn until<F, Fut>(what: &str, within: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// orch-control replicas 1..=n; replica 1 bootstraps, the others join it.
pub struct OrchCluster {
    pub root: tempfile::TempDir,
    pub addrs: Vec<String>,
    /// Each replica's API address (TLS).
    pub api_addrs: Vec<String>,
    /// The admin certificate for the replication ports (mutual TLS), once
    /// replica 1 made it.
    tls: Option<PeerTls>,
    procs: Vec<Option<Process>>,
    /// Flags every replica starts with.
    flags: Vec<String>,
}

impl OrchCluster {
    pub async fn start(replicas: usize) -> Result<Self> {
        Self::start_with(replicas, &[]).await
    }

    /// [`Self::start`], every replica with `flags` too.
    pub async fn start_with(replicas: usize, flags: &[&str]) -> Result<Self> {
        let root = tempfile::tempdir()?;
        let mut cluster = Self {
            addrs: vec!["127.0.0.1:0".into(); replicas],
            api_addrs: vec![String::new(); replicas],
            tls: None,
            procs: (0..replicas).map(|_| None).collect(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            root,
        };
        cluster.spawn(0, &["--init"])?;
        cluster.tls = Some(PeerTls::from_client_config(&cluster.api_config(0)?)?);
        let seed = cluster.addrs[0].clone();
        for index in 1..replicas {
            // A joining replica brings the cluster CA, copied by hand.
            let from = cluster.root.path().join("replica-1").join("pki");
            let to = cluster
                .root
                .path()
                .join(format!("replica-{}", index + 1))
                .join("pki");
            std::fs::create_dir_all(&to)?;
            for file in ["ca.crt", "ca.key"] {
                std::fs::copy(from.join(file), to.join(file))?;
            }
            cluster.spawn(index, &["--join", &seed])?;
        }
        cluster.settle().await?;
        Ok(cluster)
    }

    fn spawn(&mut self, index: usize, extra: &[&str]) -> Result<()> {
        let dir = self.root.path().join(format!("replica-{}", index + 1));
        let log = std::fs::File::create(dir.with_extension("log"))?;
        let child = Command::new(ORCH_CONTROL)
            .args(["--data-dir", &dir.to_string_lossy()])
            .args(["--node-id", &(index + 1).to_string()])
            .args(["--listen", &self.addrs[index]])
            .args(["--api-listen", "127.0.0.1:0"])
            .args(["--health-listen", "127.0.0.1:0"])
            .args(["--heartbeat-ms", &HEARTBEAT_MS.to_string()])
            .args(["--election-timeout-ms", &ELECTION_MS.to_string()])
            .args(&self.flags)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting orch-control")?;
        let mut process = Process::new(child);
        let line = process.read_line()?;
        let Some(addr) = line.trim().strip_prefix("orch-control listening on ") else {
            bail!(
                "orch-control did not start: {}",
                std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
            );
        };
        self.addrs[index] = addr.to_string();
        self.api_addrs[index] = process
            .read_line()?
            .trim()
            .strip_prefix("orch-control API on ")
            .context("orch-control did not print its API address")?
            .to_string();
        self.procs[index] = Some(process);
        Ok(())
    }

    /// The credentials for the replication ports.
    pub fn tls(&self) -> Result<PeerTls> {
        self.tls.clone().context("replica 1 has not started")
    }

    async fn status(
        addr: &str,
        tls: &Option<PeerTls>,
    ) -> Option<orch_control::store::raft::transport::proto::StatusResponse> {
        replica_status(addr, tls.as_ref()?).await.ok()
    }

    /// `count` API clients spread over the replicas (client i prefers
    /// replica i mod n), once the system namespaces exist.
    pub async fn api_clients(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<orch_core::api::ApiClient>> {
        let mut clients = Vec::with_capacity(count);
        for index in 0..count {
            clients.push(orch_core::api::ApiClient::new(
                &self.api_config(index % self.api_addrs.len())?,
                timeout,
            )?);
        }
        if let Some(first) = clients.first() {
            until_default_namespace(first).await;
        }
        Ok(clients)
    }

    /// The admin's client config for every replica's API, this one first.
    pub fn api_config(&self, first: usize) -> Result<orch_core::api::config::ClientConfig> {
        let path = self
            .root
            .path()
            .join("replica-1")
            .join("pki")
            .join("admin.conf");
        let mut config = orch_core::api::config::ClientConfig::load(&path)?;
        let n = self.api_addrs.len();
        config.servers = (0..n)
            .map(|i| self.api_addrs[(first + i) % n].clone())
            .collect();
        Ok(config)
    }

    /// Waits until every running replica sees all voters and a leader.
    async fn settle(&self) -> Result<()> {
        let addrs: Vec<String> = self
            .running()
            .into_iter()
            .map(|i| self.addrs[i].clone())
            .collect();
        let voters = self.addrs.len();
        until("orch replicas settle", Duration::from_secs(60), || {
            let addrs = addrs.clone();
            async move {
                for addr in &addrs {
                    match Self::status(addr, &self.tls).await {
                        Some(s) if s.voters.len() == voters && s.leader_id != 0 => {}
                        _ => return false,
                    }
                }
                true
            }
        })
        .await
    }

    fn running(&self) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|i| self.procs[*i].is_some())
            .collect()
    }

    /// The index of the current leader.
    pub async fn leader(&self) -> Result<usize> {
        for index in self.running() {
            if let Some(status) = Self::status(&self.addrs[index], &self.tls).await
                && status.leader_id != 0
            {
                return Ok(status.leader_id as usize - 1);
            }
        }
        bail!("no orch leader")
    }

    pub fn pid(&self, index: usize) -> Option<u32> {
        self.procs[index].as_ref().map(|p| p.child.id())
    }

    pub fn kill(&mut self, index: usize) {
        self.procs[index] = None;
    }

    /// Restarts a killed replica on its address and waits for the cluster.
    pub async fn restart(&mut self, index: usize) -> Result<()> {
        self.spawn(index, &[])?;
        self.settle().await
    }

    /// Kills every replica and starts them again from their data, with
    /// `flags` instead of the flags they started with. API addresses
    /// change: make new clients.
    pub async fn restart_all_with(&mut self, flags: &[&str]) -> Result<()> {
        self.flags = flags.iter().map(|f| f.to_string()).collect();
        for index in 0..self.procs.len() {
            self.kill(index);
        }
        for index in 0..self.procs.len() {
            self.spawn(index, &[])?;
        }
        self.settle().await
    }
}

/// etcd members on loopback ports picked free just before start.
pub struct EtcdCluster {
    pub root: tempfile::TempDir,
    pub client_urls: Vec<String>,
    /// What a client presents and trusts: a CA of the bench's own, and a
    /// certificate it signed (the members serve and call with it too).
    pub tls: tonic::transport::ClientTlsConfig,
    /// The same credentials as etcdctl's flags.
    pub etcdctl_tls: Vec<String>,
    args: Vec<Vec<String>>,
    procs: Vec<Option<Process>>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl EtcdCluster {
    pub async fn start(members: usize) -> Result<Self> {
        let root = tempfile::tempdir()?;
        let pki = orch_control::pki::Pki::new(root.path());
        pki.create_ca()?;
        // Serving and client use in one certificate, for 127.0.0.1.
        pki.ensure_peer_certificate(&["127.0.0.1".to_string()])?;
        let file = |name: &str| pki.path(name).to_string_lossy().into_owned();
        let (ca, cert, key) = (
            file(orch_control::pki::CA_CERT),
            file(orch_control::pki::PEER_CERT),
            file(orch_control::pki::PEER_KEY),
        );
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(&ca).context("reading the bench CA")?,
            ))
            .identity(tonic::transport::Identity::from_pem(
                std::fs::read(&cert).context("reading the bench certificate")?,
                std::fs::read(&key).context("reading the bench key")?,
            ));
        let mut client_urls = Vec::new();
        let mut peer_urls = Vec::new();
        for _ in 0..members {
            client_urls.push(format!("https://127.0.0.1:{}", free_port()?));
            peer_urls.push(format!("https://127.0.0.1:{}", free_port()?));
        }
        let initial_cluster = peer_urls
            .iter()
            .enumerate()
            .map(|(i, url)| format!("m{}={url}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let args = (0..members)
            .map(|i| {
                let dir: PathBuf = root.path().join(format!("m{}", i + 1));
                [
                    "--name".to_string(),
                    format!("m{}", i + 1),
                    "--data-dir".into(),
                    dir.to_string_lossy().into_owned(),
                    "--listen-client-urls".into(),
                    client_urls[i].clone(),
                    "--advertise-client-urls".into(),
                    client_urls[i].clone(),
                    "--listen-peer-urls".into(),
                    peer_urls[i].clone(),
                    "--initial-advertise-peer-urls".into(),
                    peer_urls[i].clone(),
                    "--initial-cluster".into(),
                    initial_cluster.clone(),
                    "--initial-cluster-state".into(),
                    "new".into(),
                    "--initial-cluster-token".into(),
                    "orch-bench".into(),
                    "--heartbeat-interval".into(),
                    HEARTBEAT_MS.to_string(),
                    "--election-timeout".into(),
                    ELECTION_MS.to_string(),
                    "--logger".into(),
                    "zap".into(),
                    "--log-level".into(),
                    "warn".into(),
                    "--client-cert-auth".into(),
                    "--trusted-ca-file".into(),
                    ca.clone(),
                    "--cert-file".into(),
                    cert.clone(),
                    "--key-file".into(),
                    key.clone(),
                    "--peer-client-cert-auth".into(),
                    "--peer-trusted-ca-file".into(),
                    ca.clone(),
                    "--peer-cert-file".into(),
                    cert.clone(),
                    "--peer-key-file".into(),
                    key.clone(),
                ]
                .to_vec()
            })
            .collect();
        let etcdctl_tls = ["--cacert", &ca, "--cert", &cert, "--key", &key]
            .map(String::from)
            .to_vec();
        let mut cluster = Self {
            root,
            client_urls,
            tls,
            etcdctl_tls,
            args,
            procs: (0..members).map(|_| None).collect(),
        };
        for index in 0..members {
            cluster.spawn(index)?;
        }
        cluster.settle().await?;
        Ok(cluster)
    }

    fn spawn(&mut self, index: usize) -> Result<()> {
        let log = std::fs::File::create(self.root.path().join(format!("m{}.log", index + 1)))?;
        let child = Command::new("etcd")
            .args(&self.args[index])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian's etcd-server; `cargo xtask setup` installs it)")?;
        self.procs[index] = Some(Process::new(child));
        Ok(())
    }

    /// A connection to the members at `urls`.
    pub async fn connect(
        urls: &[String],
        tls: &tonic::transport::ClientTlsConfig,
    ) -> Result<etcd_client::Client> {
        let options = etcd_client::ConnectOptions::new().with_tls(tls.clone());
        etcd_client::Client::connect(urls, Some(options))
            .await
            .context("connecting to etcd")
    }

    async fn status(url: &str, tls: &tonic::transport::ClientTlsConfig) -> Option<(u64, u64)> {
        let mut client = Self::connect(&[url.to_string()], tls).await.ok()?;
        let status = tokio::time::timeout(Duration::from_secs(1), client.status())
            .await
            .ok()?
            .ok()?;
        Some((status.header()?.member_id(), status.leader()))
    }

    /// Waits until every running member knows a leader.
    async fn settle(&self) -> Result<()> {
        let urls: Vec<String> = (0..self.procs.len())
            .filter(|i| self.procs[*i].is_some())
            .map(|i| self.client_urls[i].clone())
            .collect();
        until("etcd members settle", Duration::from_secs(60), || {
            let urls = urls.clone();
            let tls = self.tls.clone();
            async move {
                for url in &urls {
                    match Self::status(url, &tls).await {
                        Some((_, leader)) if leader != 0 => {}
                        _ => return false,
                    }
                }
                true
            }
        })
        .await
    }

    /// The index of the current leader.
    pub async fn leader(&self) -> Result<usize> {
        let mut members = Vec::new();
        let mut leader = 0;
        for (index, url) in self.client_urls.iter().enumerate() {
            if self.procs[index].is_none() {
                continue;
            }
            if let Some((member, known)) = Self::status(url, &self.tls).await {
                members.push((index, member));
                leader = leader.max(known);
            }
        }
        members
            .into_iter()
            .find(|(_, member)| *member == leader)
            .map(|(index, _)| index)
            .context("no etcd leader")
    }

    pub fn pid(&self, index: usize) -> Option<u32> {
        self.procs[index].as_ref().map(|p| p.child.id())
    }

    pub fn kill(&mut self, index: usize) {
        self.procs[index] = None;
    }

    pub async fn restart(&mut self, index: usize) -> Result<()> {
        self.spawn(index)?;
        self.settle().await
    }
}

/// Runs a command to completion and returns how long it took.
pub fn timed(command: &mut Command, what: &str) -> Result<Duration> {
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    let took = started.elapsed();
    if !output.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(took)
}

/// Total size of the files under `dir`.
pub fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Waits (up to 10 s) for the system namespaces a new cluster creates.
pub async fn until_default_namespace(client: &orch_core::api::ApiClient) {
    let mut probe = client.clone();
    for _ in 0..100 {
        if probe
            .get(orch_core::object::Kind::Namespace, None, "default")
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Percentile `p` (0-100) of `samples`, nearest rank.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}
