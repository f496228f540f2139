//! Harness for tests that run real `orch-control` processes on loopback.
#![allow(dead_code)]

pub mod exec;
pub mod kubelet;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orch_control::store::raft::client::StoreClient;
use orch_control::store::raft::peer_tls::PeerTls;
use orch_control::store::raft::service::RangeQuery;
use orch_control::store::raft::transport::proto::StatusResponse;
use orch_control::store::types::{Command as StoreCommand, Op, Request, RequestId, Txn};

const ORCH_CONTROL: &str = env!("CARGO_BIN_EXE_orch-control");

/// Credentials for each started replica's replication port, by address:
/// the admin certificate its data directory holds (signed by its cluster's
/// CA; every replica of one test cluster shares that CA).
static PEERS: std::sync::Mutex<BTreeMap<String, PeerTls>> = std::sync::Mutex::new(BTreeMap::new());

/// The credentials for the replication port at `addr` (a replica started
/// by this harness).
pub fn peer_tls(addr: &str) -> PeerTls {
    PEERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(addr)
        .cloned()
        .unwrap_or_else(|| panic!("no replica of this test listens on {addr}"))
}

/// A store client of the replicas at `addrs` (mutual TLS with the
/// credentials of the first one's cluster).
pub fn store_client(addrs: &[String], timeout: Duration) -> StoreClient {
    StoreClient::new(addrs, &peer_tls(&addrs[0]), timeout).expect("store client")
}

pub struct Replica {
    pub id: u64,
    /// `127.0.0.1:0` until first started; then the port the replica got
    /// (kept for restarts: the cluster knows it by that address).
    pub addr: String,
    /// The API's address (TLS), kept for restarts like `addr`.
    pub api_addr: String,
    /// The health port (/healthz, /readyz, /metrics).
    pub health_addr: String,
    pub dir: std::path::PathBuf,
    pub process: Option<Child>,
    /// Held open so the replica never writes to a closed pipe.
    pub stdout: Option<std::io::BufReader<std::process::ChildStdout>>,
}

impl Replica {
    pub fn new(id: u64, dir: std::path::PathBuf) -> Self {
        Self {
            id,
            addr: "127.0.0.1:0".into(),
            api_addr: "127.0.0.1:0".into(),
            health_addr: "127.0.0.1:0".into(),
            dir,
            process: None,
            stdout: None,
        }
    }
}

impl Replica {
    pub fn start(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(self.dir.with_extension("log")).expect("log file");
        let child = Command::new(ORCH_CONTROL)
            .args([
                "--data-dir",
                &self.dir.to_string_lossy(),
                "--node-id",
                &self.id.to_string(),
            ])
            .args(["--api-listen", &self.api_addr])
            .args(["--health-listen", &self.health_addr])
            .args([
                "--listen",
                &self.addr,
                "--heartbeat-ms",
                "50",
                "--election-timeout-ms",
                "300",
            ])
            .args(["--write-timeout-ms", "2000"])
            // Store and API tests compare whole states and revisions: no
            // controller writing its Lease meanwhile, unless a test asks.
            .args(if extra.contains(&"--controllers") {
                &[][..]
            } else {
                &["--controllers", ""][..]
            })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start orch-control");
        // The first line says where it listens (no port picked and then
        // lost to another test in the meantime).
        let mut child = child;
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        use std::io::BufRead as _;
        let read = stdout
            .read_line(&mut line)
            .expect("read orch-control's stdout");
        let log = self.dir.with_extension("log");
        assert!(
            read > 0,
            "orch-control exited before listening: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.addr = line
            .trim()
            .strip_prefix("orch-control listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        line.clear();
        let read = stdout
            .read_line(&mut line)
            .expect("read orch-control's stdout");
        assert!(
            read > 0,
            "orch-control exited before serving the API: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.api_addr = line
            .trim()
            .strip_prefix("orch-control API on ")
            .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
            .to_string();
        // The certificates exist once the API line is out.
        let tls = PeerTls::from_client_config(&self.api_config(&[]))
            .unwrap_or_else(|e| panic!("admin config of replica {}: {e}", self.id));
        PEERS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(self.addr.clone(), tls);
        line.clear();
        stdout
            .read_line(&mut line)
            .expect("read orch-control's stdout");
        self.health_addr = line
            .trim()
            .strip_prefix("orch-control health on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected third line {line:?}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        self.stdout = Some(stdout);
        self.process = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
        self.stdout = None;
    }
}

impl Replica {
    /// A client config for the API servers at `servers`, with this
    /// replica's admin credentials (`pki/admin.conf`).
    pub fn api_config(&self, servers: &[String]) -> orch_core::api::config::ClientConfig {
        let path = self.dir.join("pki").join("admin.conf");
        let mut config = orch_core::api::config::ClientConfig::load(&path)
            .unwrap_or_else(|e| panic!("admin config: {e}"));
        config.servers = servers.to_vec();
        config
    }

    /// Gives this (not yet started) replica the cluster CA of `from`, as an
    /// operator copies it before `--join`.
    pub fn copy_ca_from(&self, from: &Replica) {
        let pki = self.dir.join("pki");
        std::fs::create_dir_all(&pki).expect("pki dir");
        for file in ["ca.crt", "ca.key"] {
            std::fs::copy(from.dir.join("pki").join(file), pki.join(file)).expect("copy the CA");
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn put(id: u128, key: &str) -> Request {
    Request {
        id: RequestId(id),
        command: StoreCommand::Txn(Txn {
            success: vec![Op::Put {
                key: key.as_bytes().to_vec(),
                value: id.to_le_bytes().to_vec(),
                lease: None,
            }],
            ..Txn::default()
        }),
    }
}

pub async fn local_state(addr: &str) -> Option<(u64, BTreeMap<Vec<u8>, u64>)> {
    let mut client =
        StoreClient::new(&[addr.to_string()], &peer_tls(addr), Duration::from_secs(2)).ok()?;
    let query = RangeQuery {
        prefix: b"/registry/".to_vec(),
        start: None,
        limit: 0,
        linearizable: false,
    };
    let page = client.range(&query).await.ok()?;
    Some((
        page.revision,
        page.kvs
            .into_iter()
            .map(|kv| (kv.key, kv.mod_revision))
            .collect(),
    ))
}

impl Replica {
    /// Sends a signal (SIGSTOP / SIGCONT) to the running process.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.process {
            let status = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -{signal} failed");
        }
    }
}

/// `n` replicas in `dir`: the first bootstraps, the others join it. Returns
/// once every replica has applied a first write.
pub async fn cluster(dir: &std::path::Path, n: u64) -> (Vec<Replica>, Vec<String>) {
    let mut replicas: Vec<Replica> = (1..=n)
        .map(|id| Replica::new(id, dir.join(format!("replica-{id}"))))
        .collect();
    replicas[0].start(&["--init"]);
    let seed = replicas[0].addr.clone();
    let (first, others) = replicas.split_at_mut(1);
    for replica in others.iter_mut() {
        replica.copy_ca_from(&first[0]);
        replica.start(&["--join", &seed]);
    }
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr.clone()).collect();
    // Joins promote learners to voters one by one: wait for all of them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut voters = Vec::new();
        for addr in &addrs {
            voters.push(status(addr).await.map(|s| s.voters.len()));
        }
        if voters.iter().all(|v| *v == Some(addrs.len())) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all replicas became voters within 30 s: {voters:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The API server's system namespaces land first: tests comparing
    // states must not race them.
    system_namespaces_created(&addrs[0]).await;
    let mut probe = store_client(&addrs, Duration::from_secs(30));
    probe
        .write(&put(1, "/registry/probe"))
        .await
        .expect("first write");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = 0;
        for addr in &addrs {
            if local_state(addr)
                .await
                .is_some_and(|(_, keys)| keys.contains_key(&b"/registry/probe"[..]))
            {
                seen += 1;
            }
        }
        if seen == addrs.len() {
            return (replicas, addrs);
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not all join within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica's own view of the cluster.
pub async fn status(addr: &str) -> Option<StatusResponse> {
    orch_control::store::raft::client::replica_status(addr, &peer_tls(addr))
        .await
        .ok()
}

/// Waits until every replica at `addrs` holds the same keys; returns them.
pub async fn converged(addrs: &[String]) -> (u64, BTreeMap<Vec<u8>, u64>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut states = Vec::new();
        for addr in addrs {
            states.push(local_state(addr).await);
        }
        if states.iter().all(Option::is_some) && states.windows(2).all(|w| w[0] == w[1]) {
            return states.into_iter().next().flatten().expect("state");
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `orch-control` with `args` where it must refuse to start: waits
/// for it to exit (at most 30 s) and returns its stderr.
pub fn refused(args: &[&str]) -> String {
    let mut child = Command::new(ORCH_CONTROL)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start orch-control");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait for orch-control") {
            let mut stderr = String::new();
            use std::io::Read as _;
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            assert!(
                !status.success(),
                "orch-control {args:?} should have refused to start: {stderr}"
            );
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("orch-control {args:?} did not refuse within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file under `dir` with its length and a hash of its bytes, to show
/// nothing was written.
pub fn dir_contents(dir: &std::path::Path) -> BTreeMap<std::path::PathBuf, (u64, u64)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&bytes, &mut hasher);
                files.insert(
                    path.clone(),
                    (bytes.len() as u64, std::hash::Hasher::finish(&hasher)),
                );
            }
        }
    }
    files
}

/// Opens a watch of `prefix` from revision `start` on the replica at `addr`.
pub async fn watch(
    addr: &str,
    prefix: &[u8],
    start: u64,
) -> tonic::Streaming<orch_control::store::raft::transport::proto::RaftMessage> {
    use orch_control::store::raft::service::WatchQuery;
    use orch_control::store::raft::transport::proto::RaftMessage;
    use orch_control::store::raft::transport::proto::store_client::StoreClient as GrpcStore;
    let endpoint = peer_tls(addr).endpoint(addr).expect("endpoint");
    let mut grpc = GrpcStore::connect(endpoint)
        .await
        .expect("connect for a watch");
    let query = WatchQuery {
        prefix: prefix.to_vec(),
        start,
    };
    let data = postcard::to_stdvec(&query).expect("encode");
    grpc.watch(RaftMessage { data })
        .await
        .expect("watch")
        .into_inner()
}

/// The next batch of a watch stream (at most 20 s away).
pub async fn next_batch(
    stream: &mut tonic::Streaming<orch_control::store::raft::transport::proto::RaftMessage>,
) -> orch_control::store::raft::service::WatchBatch {
    let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("watch stalled")
        .expect("watch stream")
        .expect("watch stream open");
    postcard::from_bytes(&message.data).expect("decode watch batch")
}

/// The id of the replica the cluster at `addrs` says leads it.
pub async fn leader_id(addrs: &[String]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for addr in addrs {
            if let Some(status) = status(addr).await
                && status.leader_id != 0
            {
                return status.leader_id;
            }
        }
        assert!(Instant::now() < deadline, "no leader within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the API server of the replica at `addr` has created the
/// system namespaces (default, kube-system, kube-node-lease).
pub async fn system_namespaces_created(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let namespaces = local_state(addr).await.map_or(0, |(_, keys)| {
            keys.keys()
                .filter(|key| key.starts_with(b"/registry/namespaces/"))
                .count()
        });
        if namespaces >= 3 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "system namespaces not created in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `path` from the health port at `addr`: (status line, body).
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the health port");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// Every controller, with short election timings so a takeover fits in a
/// test.
pub const FAST_ELECTION: [&str; 8] = [
    "--controllers",
    "*",
    "--leader-elect-lease-duration-ms",
    "3000",
    "--leader-elect-renew-deadline-ms",
    "2000",
    "--leader-elect-retry-period-ms",
    "300",
];

/// A client of `replica`'s API, once the `default` namespace exists.
pub async fn client_of(replica: &Replica) -> orch_core::api::ApiClient {
    let config = replica.api_config(std::slice::from_ref(&replica.api_addr));
    let mut client =
        orch_core::api::ApiClient::new(&config, Duration::from_secs(20)).expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .get(orch_core::object::Kind::Namespace, None, "default")
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "namespace default never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
}

/// One replica running every controller, and a client of its API.
pub async fn replica_with_controllers(
    dir: &std::path::Path,
) -> (Replica, orch_core::api::ApiClient) {
    replica_with_controllers_and(dir, &[]).await
}

/// [`replica_with_controllers`] with more flags.
pub async fn replica_with_controllers_and(
    dir: &std::path::Path,
    extra: &[&str],
) -> (Replica, orch_core::api::ApiClient) {
    let mut replica = Replica::new(1, dir.join("replica-1"));
    let mut args = vec!["--init"];
    args.extend(FAST_ELECTION);
    args.extend(extra);
    replica.start(&args);
    let client = client_of(&replica).await;
    (replica, client)
}

pub const ORCHCTL: &str = env!("CARGO_BIN_EXE_orchctl");

/// orchctl with the admin client config `config`.
pub fn orchctl(config: &str, args: &[&str]) -> std::process::Output {
    Command::new(ORCHCTL)
        .args(args)
        .env("ORCH_CONFIG", config)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run orchctl")
}

pub fn ok(server: &str, args: &[&str]) -> String {
    let output = orchctl(server, args);
    assert!(
        output.status.success(),
        "orchctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `count` replicas of one cluster, every one running the controllers
/// when it holds their Lease (short election timings).
pub fn replicas_with_controllers(dir: &std::path::Path, count: u64) -> Vec<Replica> {
    let mut replicas: Vec<Replica> = (1..=count)
        .map(|id| Replica::new(id, dir.join(format!("replica-{id}"))))
        .collect();
    let mut args = vec!["--init"];
    args.extend(FAST_ELECTION);
    replicas[0].start(&args);
    let seed = replicas[0].addr.clone();
    for index in 1..replicas.len() {
        let (first, rest) = replicas.split_at_mut(index);
        rest[0].copy_ca_from(&first[0]);
        let mut args = vec!["--join", seed.as_str()];
        args.extend(FAST_ELECTION);
        rest[0].start(&args);
    }
    replicas
}

/// Who holds the controller manager's Lease now.
pub async fn controller_lease_holder(client: &mut orch_core::api::ApiClient) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(orch_core::object::Object::Lease(lease)) = client
            .get(
                orch_core::object::Kind::Lease,
                Some("kube-system"),
                "orch-controller-manager",
            )
            .await
            && let Some(holder) = lease.spec.and_then(|s| s.holder_identity)
        {
            return holder;
        }
        assert!(
            Instant::now() < deadline,
            "no controller lease holder in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
