//! The demo `up` applies, how it waits for it to answer, and what it
//! prints afterwards.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{API_PORT, HOST_ADDRESS, NODE, NODE_ADDRESS, State};
use crate::run_command;

/// The NodePort the demo Service asks for.
const DEMO_NODE_PORT: u16 = 30080;
pub const DEMO_IMAGE: &str = "orch.demo/web:1";
pub const DEMO_MANIFEST: &str = include_str!("../../demo/web.yaml");
/// How long the demo may take to answer through both Services.
const DEMO_DEADLINE: Duration = Duration::from_secs(180);

/// orchctl with the admin config `--init` wrote.
pub struct Orchctl {
    pub bin: PathBuf,
    pub config: PathBuf,
}

impl Orchctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command.args(args).env("ORCH_CONFIG", &self.config);
        command
    }

    pub fn run(&self, args: &[&str]) -> Result<()> {
        run_command(&mut self.command(args))
    }

    /// What it printed, or why it failed.
    pub fn output(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(args)
            .output()
            .map_err(|e| format!("orchctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "orchctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// Waits until the demo's pods are ready, a pod reaches the ClusterIP and
/// this machine reaches the NodePort.
pub fn wait_for_demo(orchctl: &Orchctl) -> Result<()> {
    let deadline = Instant::now() + DEMO_DEADLINE;
    let until = |what: &str, check: &mut dyn FnMut() -> Result<String, String>| -> Result<String> {
        loop {
            match check() {
                Ok(answer) => return Ok(answer),
                Err(why) if Instant::now() > deadline => {
                    bail!("{what} within {DEMO_DEADLINE:?}: {why}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    };
    orchctl.run(&[
        "rollout",
        "status",
        "deployment/web",
        "--timeout",
        &format!("{}s", DEMO_DEADLINE.as_secs()),
    ])?;
    let cluster_ip = until("the web Service has no ClusterIP", &mut || {
        let json = orchctl.output(&["get", "service", "web", "-o", "json"])?;
        let service: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| format!("orchctl's JSON: {e}"))?;
        service["spec"]["clusterIP"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "no spec.clusterIP yet".to_string())
    })?;
    let pod = until("no demo pod", &mut || {
        let names = orchctl.output(&["get", "pods", "-l", "app=web", "-o", "name"])?;
        names
            .lines()
            .next()
            .map(|name| name.trim_start_matches("pod/").to_string())
            .ok_or_else(|| "no pod yet".to_string())
    })?;
    let url = format!("http://{cluster_ip}/");
    let answer = until(&format!("pod {pod} never reached {url}"), &mut || {
        orchctl.output(&[
            "exec", &pod, "--", "timeout", "5", "wget", "-q", "-O", "-", &url,
        ])
    })?;
    eprintln!("{url} from pod {pod}: {}", answer.trim());
    let answer = until(
        &format!("{NODE_ADDRESS}:{DEMO_NODE_PORT} never answered"),
        &mut || http_get(NODE_ADDRESS, DEMO_NODE_PORT, "/"),
    )?;
    eprintln!("http://{NODE_ADDRESS}:{DEMO_NODE_PORT}/ from this machine: {answer}");
    Ok(())
}

/// `GET path` over plain TCP with short timeouts: the body.
pub fn http_get(address: Ipv4Addr, port: u16, path: &str) -> Result<String, String> {
    let target = SocketAddr::from((address, port));
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))
        .map_err(|e| format!("connect {target}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .map_err(|e| format!("send to {target}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read from {target}: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1);
    if !head.starts_with("HTTP/1.") || status != Some("200") {
        return Err(format!(
            "{target}{path} answered {:?}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.trim().to_string())
}

pub fn print_next_steps(state: &State) {
    let bin = std::fs::read_to_string(state.bin_file()).unwrap_or_default();
    let config = state.admin_config();
    println!(
        "
A single-node orch cluster runs on this machine:
  orch-control  API at {HOST_ADDRESS}:{API_PORT}, log {control_log}
  orch-node     node {NODE} at {NODE_ADDRESS} (network namespace {NODE}), log {node_log}

Try:
  export PATH={bin}:$PATH ORCH_CONFIG={config}
  orchctl get pods -o wide
  orchctl get deploy,svc,endpointslices
  orchctl logs $(orchctl get pods -l app=web -o name | head -1)
  orchctl exec -it $(orchctl get pods -l app=web -o name | head -1) -- sh
  curl http://{NODE_ADDRESS}:{DEMO_NODE_PORT}/        # the NodePort, answered by one of the pods
  orchctl scale deployment web --replicas 5
  orchctl node dataplane {NODE}
  bpftool map dump pinned /sys/fs/bpf/orch/{NODE}/SERVICES

Stop it and remove everything it made:
  {down}",
        control_log = state.log("orch-control").display(),
        node_log = state.log("orch-node").display(),
        bin = bin.trim(),
        down = super::down_command(state),
        config = config.display(),
    );
}
