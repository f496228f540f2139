//! Container probes as the kubelet runs them: startup, liveness and
//! readiness, by HTTP GET or TCP connect from inside the pod's network
//! namespace, or by a command exec'd into the container (success: exit
//! code 0), with initialDelaySeconds, periodSeconds, timeoutSeconds,
//! failureThreshold and successThreshold.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pods::now_seconds;
use crate::runtime::exec::{self, ExecIo, ExecOptions};
use crate::runtime::sandbox;
use crate::runtime::shim::protocol::ContainerState;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Startup,
    Liveness,
    Readiness,
}

/// One container instance's probe history.
#[derive(Default)]
struct History {
    last_run: HashMap<Kind, Instant>,
    successes: HashMap<Kind, u32>,
    failures: HashMap<Kind, u32>,
    started: bool,
    ready: bool,
    /// When a restart's SIGTERM was sent.
    stopping_since: Option<Instant>,
}

/// What the probes say of a running container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    /// Set when the container must be restarted (liveness or startup
    /// failed `failureThreshold` times): why, and the signal to send now
    /// (SIGTERM, then SIGKILL once `grace` has passed).
    pub restart: Option<(String, i32)>,
}

#[derive(Default)]
pub struct Prober {
    /// (pod uid, container instance id) -> history.
    histories: Mutex<HashMap<(String, String), History>>,
}

impl Prober {
    /// Forgets a pod's histories.
    pub fn forget(&self, uid: &str) {
        self.histories
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(pod, _), _| pod != uid);
    }

    /// Runs the probes of `container` (instance `instance`, running) that
    /// are due, in the pod whose directory is `pod_dir`.
    pub async fn check(
        &self,
        uid: &str,
        pod_dir: &Path,
        container: &Container,
        instance: &ContainerState,
        grace: Duration,
    ) -> Verdict {
        let key = (uid.to_string(), instance.id.clone());
        // Being restarted already: escalate after the grace period.
        if let Some(since) = self
            .histories
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .and_then(|h| h.stopping_since)
        {
            let signal = if since.elapsed() >= grace { 9 } else { 0 };
            return Verdict {
                ready: false,
                restart: Some(("restarting".into(), signal)),
            };
        }
        let since_start = instance
            .started_at
            .map(|s| (now_seconds() - s).max(0.0))
            .unwrap_or(0.0);
        let mut due = Vec::new();
        {
            let mut histories = self.histories.lock().unwrap_or_else(|p| p.into_inner());
            // Earlier instances (`<name>-<attempt>`) of this container
            // are done with.
            let same_container = |id: &str| {
                id.rsplit_once('-').is_some_and(|(name, attempt)| {
                    name == container.name && attempt.parse::<u32>().is_ok()
                })
            };
            histories
                .retain(|(pod, id), _| pod != uid || *id == instance.id || !same_container(id));
            let history = histories.entry(key.clone()).or_default();
            if container.startup_probe.is_none() {
                history.started = true;
            }
            let kinds: &[(Kind, &Option<Probe>)] = if history.started {
                &[
                    (Kind::Liveness, &container.liveness_probe),
                    (Kind::Readiness, &container.readiness_probe),
                ]
            } else {
                &[(Kind::Startup, &container.startup_probe)]
            };
            for (kind, probe) in kinds {
                let Some(probe) = probe else { continue };
                let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as f64;
                let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
                let ran_recently = history
                    .last_run
                    .get(kind)
                    .is_some_and(|at| at.elapsed() < period);
                if since_start >= delay && !ran_recently {
                    history.last_run.insert(*kind, Instant::now());
                    due.push((*kind, probe.clone()));
                }
            }
        }
        let mut results = Vec::new();
        for (kind, probe) in due {
            let netns = sandbox::namespaces(pod_dir).network;
            let outcome = run(netns, pod_dir, &instance.id, container, &probe).await;
            results.push((kind, probe, outcome));
        }
        let mut histories = self.histories.lock().unwrap_or_else(|p| p.into_inner());
        let history = histories.entry(key).or_default();
        let mut restart = None;
        for (kind, probe, outcome) in results {
            let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1) as u32;
            let success_threshold = probe.success_threshold.unwrap_or(1).max(1) as u32;
            match outcome {
                Ok(()) => {
                    *history.successes.entry(kind).or_default() += 1;
                    history.failures.insert(kind, 0);
                }
                Err(reason) => {
                    *history.failures.entry(kind).or_default() += 1;
                    history.successes.insert(kind, 0);
                    tracing::debug!(container = %container.name, ?kind, %reason, "probe failed");
                    if history.failures[&kind] >= failure_threshold {
                        match kind {
                            Kind::Liveness => {
                                restart = Some((format!("Liveness probe failed: {reason}"), 15))
                            }
                            Kind::Startup => {
                                restart = Some((format!("Startup probe failed: {reason}"), 15))
                            }
                            Kind::Readiness => history.ready = false,
                        }
                    }
                    continue;
                }
            }
            let successes = history.successes[&kind];
            match kind {
                Kind::Startup => history.started = true,
                Kind::Readiness if successes >= success_threshold => history.ready = true,
                _ => {}
            }
        }
        if restart.is_some() {
            history.stopping_since = Some(Instant::now());
        }
        let ready = restart.is_none()
            && history.started
            && if container.readiness_probe.is_some() {
                history.ready
            } else {
                true
            };
        Verdict { ready, restart }
    }
}

/// The port a probe names: a number, or a container port's name.
fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

/// What a probe or a lifecycle hook does: one of these is set.
#[derive(Clone, Copy)]
pub(super) struct Action<'a> {
    pub exec: Option<&'a ExecAction>,
    pub http_get: Option<&'a HTTPGetAction>,
    pub tcp_socket: Option<&'a TCPSocketAction>,
}

/// Runs one probe against container instance `id` of the pod in
/// `pod_dir` (network namespace `netns`); Err says why it failed.
async fn run(
    netns: PathBuf,
    pod_dir: &Path,
    id: &str,
    container: &Container,
    probe: &Probe,
) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let action = Action {
        exec: probe.exec.as_ref(),
        http_get: probe.http_get.as_ref(),
        tcp_socket: probe.tcp_socket.as_ref(),
    };
    run_action(netns, pod_dir, id, container, action, timeout).await
}

/// Runs `action` against container instance `id` of the pod in `pod_dir`
/// (network namespace `netns`) within `timeout`; Err says why it failed.
pub(super) async fn run_action(
    netns: PathBuf,
    pod_dir: &Path,
    id: &str,
    container: &Container,
    action: Action<'_>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(http) = action.http_get {
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return Err("HTTPS probes are not supported by this node yet".into());
        }
        let port = port(container, &http.port)?;
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return in_netns(netns, move || http_get(port, &path, &headers, timeout)).await;
    }
    if let Some(tcp) = action.tcp_socket {
        let port = port(container, &tcp.port)?;
        return in_netns(netns, move || {
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), timeout)
                .map(|_| ())
                .map_err(|e| format!("dial tcp 127.0.0.1:{port}: {e}"))
        })
        .await;
    }
    if let Some(exec) = action.exec {
        let command = exec.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err("the exec handler has no command".into());
        }
        let (pod_dir, id) = (pod_dir.to_path_buf(), id.to_string());
        return tokio::task::spawn_blocking(move || exec_probe(&pod_dir, &id, command, timeout))
            .await
            .unwrap_or_else(|_| Err("the probe thread died".into()));
    }
    Err("no handler is set (httpGet, tcpSocket, exec)".into())
}

/// The most output of an exec probe kept for its failure message (the
/// kubelet's limit).
const MAX_PROBE_OUTPUT: u64 = 10 * 1024;

/// Runs `command` in the container; success is exit code 0 within
/// `timeout` (a process still running then is killed).
fn exec_probe(
    pod_dir: &Path,
    id: &str,
    command: Vec<String>,
    timeout: Duration,
) -> Result<(), String> {
    let (process, io) = exec::start(pod_dir, id, command.clone(), ExecOptions::default())
        .map_err(|e| e.to_string())?;
    let ExecIo::Pipes { stdout, stderr, .. } = io else {
        return Err("exec: a terminal came without being asked for".into());
    };
    // What it writes is kept (up to the limit) as it comes; the rest is
    // drained so it never blocks. Nobody waits for these readers: a child
    // the command left behind may hold its output open for ever.
    let output = std::sync::Arc::new(Mutex::new(Vec::new()));
    let read = |fd: std::os::fd::OwnedFd| {
        let output = output.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::from(fd);
            let mut buffer = [0u8; 4096];
            while let Ok(read @ 1..) = file.read(&mut buffer) {
                let mut kept = output.lock().unwrap_or_else(|p| p.into_inner());
                let room = (MAX_PROBE_OUTPUT as usize).saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..read.min(room)]);
            }
        })
    };
    let _readers = (read(stdout), read(stderr));
    let (done, exit) = std::sync::mpsc::channel();
    let process = std::sync::Arc::new(process);
    let waiting = process.clone();
    std::thread::spawn(move || {
        let _ = done.send(waiting.wait());
    });
    let code = match exit.recv_timeout(timeout) {
        Ok(result) => result.map_err(|e| e.to_string())?,
        Err(_) => {
            let _ = process.kill(9);
            return Err(format!("command {command:?} timed out after {timeout:?}"));
        }
    };
    if code == 0 {
        return Ok(());
    }
    // A moment for the last of its output to arrive.
    std::thread::sleep(Duration::from_millis(50));
    let output = output.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let output = String::from_utf8_lossy(&output);
    Err(format!(
        "command {command:?} exited with {code}: {}",
        output.trim()
    ))
}

/// Runs `work` on a thread of its own inside the network namespace
/// `netns` (a thread that entered it never serves anything else).
async fn in_netns(
    netns: PathBuf,
    work: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let outcome = std::fs::File::open(&netns)
            .map_err(|e| format!("{}: {e}", netns.display()))
            .and_then(|file| {
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("entering the pod's network namespace: {e}"))
            })
            .and_then(|()| work());
        let _ = done.send(outcome);
    });
    result
        .await
        .unwrap_or_else(|_| Err("the probe thread died".into()))
}

/// An HTTP/1.1 GET on loopback; success is a 2xx or 3xx status.
fn http_get(
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("Get \"http://127.0.0.1:{port}{path}\": {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: orch-probe/1.0\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = stream
        .read(&mut head)
        .map_err(|e| format!("reading the response: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {line:?}"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers one HTTP request with `status` on a loopback port.
    fn serve_once(status: u16) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buffer = [0u8; 1024];
                let _ = stream.read(&mut buffer);
                let _ = stream.write_all(
                    format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                );
            }
        });
        port
    }

    fn probe(yaml: &str) -> Probe {
        serde_yaml_ng::from_str(yaml).expect("probe")
    }

    #[tokio::test]
    async fn http_and_tcp_probes_judge_what_answers() {
        // This process's own network namespace stands in for a pod's.
        let netns = PathBuf::from("/proc/self/ns/net");
        let container: Container =
            serde_yaml_ng::from_str("{name: c, ports: [{name: web, containerPort: 1}]}")
                .expect("container");
        let ok = serve_once(200);
        assert_eq!(
            run(
                netns.clone(),
                Path::new("/nonexistent"),
                "c-0",
                &container,
                &probe(&format!("httpGet: {{path: /, port: {ok}}}"))
            )
            .await,
            Ok(())
        );
        let bad = serve_once(500);
        let error = run(
            netns.clone(),
            Path::new("/nonexistent"),
            "c-0",
            &container,
            &probe(&format!("httpGet: {{path: /, port: {bad}}}")),
        )
        .await
        .expect_err("500 fails");
        assert!(error.contains("statuscode: 500"), "{error}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        assert!(
            run(
                netns.clone(),
                Path::new("/nonexistent"),
                "c-0",
                &container,
                &probe(&format!("tcpSocket: {{port: {closed}}}"))
            )
            .await
            .is_err()
        );
        let open = serve_once(200);
        assert_eq!(
            run(
                netns.clone(),
                Path::new("/nonexistent"),
                "c-0",
                &container,
                &probe(&format!("tcpSocket: {{port: {open}}}"))
            )
            .await,
            Ok(())
        );
        // An exec probe needs the pod's shim: without one, it fails and
        // says where it looked.
        let error = run(
            netns,
            Path::new("/nonexistent"),
            "c-0",
            &container,
            &probe("exec: {command: [true]}"),
        )
        .await
        .expect_err("no shim");
        assert!(error.contains("/nonexistent/shim.sock"), "{error}");
    }
}
