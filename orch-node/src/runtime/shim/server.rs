//! The shim: one small process per pod (`orch-node shim --pod-dir DIR`).
//!
//! libcontainer may not be called concurrently (it chdir()s the process)
//! and makes its caller the parent of every container init, so the agent
//! never calls it: each pod's shim does, one call at a time, from its
//! main thread. The shim is a child subreaper, reaps its containers and
//! records their exit codes, holds their stdout/stderr and writes the log
//! files, re-executes itself from a sealed memfd first (a container that
//! could reach /proc/<shim>/exe cannot overwrite orch-node), and outlives
//! an agent restart: the agent finds it again by its socket.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::client::socket_path;
use super::protocol::{ContainerState, Request, Response, Status};

enum Event {
    Request(Request, Vec<OwnedFd>, mpsc::Sender<Response>),
    ChildExited,
}

struct Held {
    container: Container,
    state: ContainerState,
    cgroups_path: String,
    /// `Wait` requests answered when the container exits.
    waiters: Vec<mpsc::Sender<Response>>,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs the shim of the pod in `pod_dir` until told to shut down.
pub fn run(pod_dir: &Path) -> Result<(), String> {
    // From a sealed copy of the binary, never from the file on disk.
    pentacle::ensure_sealed().map_err(|e| format!("re-executing from a sealed memfd: {e}"))?;
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    let state_root = pod_dir.join("runtime-state");
    std::fs::create_dir_all(&state_root).map_err(|e| format!("{}: {e}", state_root.display()))?;
    let socket = socket_path(pod_dir);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    // Only root (the agent) may talk to the shim.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", socket.display()))?;
    }
    // Whoever started the shim (the agent reads its stdout) learns the
    // socket is there without polling; then the shim lets go of that pipe.
    {
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all(b"ready\n");
        let _ = stdout.flush();
    }
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    let (events, queue) = mpsc::channel::<Event>();

    let signals = events.clone();
    let mut sigchld = signal_hook::iterator::Signals::new([signal_hook::consts::SIGCHLD])
        .map_err(|e| format!("watching SIGCHLD: {e}"))?;
    std::thread::spawn(move || {
        for _ in sigchld.forever() {
            if signals.send(Event::ChildExited).is_err() {
                return;
            }
        }
    });
    let requests = events.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let requests = requests.clone();
            std::thread::spawn(move || serve_connection(stream, requests));
        }
    });

    let mut held: HashMap<String, Held> = HashMap::new();
    let mut execs = super::exec::Execs::new(pod_dir.join("exec"));
    let mut shutting_down = false;
    while let Ok(event) = queue.recv() {
        match event {
            Event::ChildExited => reap(&mut held, &mut execs),
            Event::Request(request, fds, reply) => match request {
                Request::Shutdown => {
                    shutting_down = true;
                    let _ = reply.send(Response::Ok);
                }
                Request::Exec {
                    id,
                    exec_id,
                    args,
                    stdin,
                    console_socket,
                } => {
                    let response = match held.get(&id) {
                        Some(entry) if entry.state.status == Status::Running => execs
                            .start(
                                &state_root,
                                &entry.container,
                                super::exec::ExecStart {
                                    exec_id,
                                    args,
                                    stdin,
                                    console_socket,
                                    fds,
                                },
                            )
                            .map(|pid| Response::Started { pid }),
                        Some(_) => Err(format!("container {id} is not running")),
                        None => Err(format!("no container {id}")),
                    };
                    let _ =
                        reply.send(response.unwrap_or_else(|message| Response::Error { message }));
                }
                Request::Wait { id } => {
                    reap(&mut held, &mut execs);
                    match held.get_mut(&id) {
                        None => {
                            let _ = reply.send(Response::Error {
                                message: format!("no container {id}"),
                            });
                        }
                        Some(entry) if entry.state.status == Status::Exited => {
                            let _ = reply.send(Response::State {
                                containers: vec![entry.state.clone()],
                            });
                        }
                        Some(entry) => entry.waiters.push(reply),
                    }
                }
                Request::ExecWait { exec_id } => {
                    reap(&mut held, &mut execs);
                    execs.wait(&exec_id, reply);
                }
                Request::ExecKill { exec_id, signal } => {
                    reap(&mut held, &mut execs);
                    let response = execs
                        .kill(&exec_id, signal)
                        .map_or_else(|message| Response::Error { message }, |()| Response::Ok);
                    let _ = reply.send(response);
                }
                request => {
                    let response = handle(&mut held, &mut execs, &state_root, request)
                        .unwrap_or_else(|message| Response::Error { message });
                    let _ = reply.send(response);
                }
            },
        }
        if shutting_down && held.values().all(|h| h.state.status != Status::Running) {
            let _ = std::fs::remove_file(&socket);
            return Ok(());
        }
    }
    Ok(())
}

fn serve_connection(stream: UnixStream, requests: mpsc::Sender<Event>) {
    let mut reader = super::wire::LineReader::new();
    let mut writer = &stream;
    while let Ok(Some((line, fds))) = reader.next(&stream) {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                let (reply, answer) = mpsc::channel();
                if requests.send(Event::Request(request, fds, reply)).is_err() {
                    return;
                }
                answer.recv().unwrap_or(Response::Error {
                    message: "the shim is stopping".into(),
                })
            }
            Err(error) => Response::Error {
                message: format!("unreadable request: {error}"),
            },
        };
        let Ok(mut text) = serde_json::to_string(&response) else {
            return;
        };
        text.push('\n');
        if writer.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

fn handle(
    held: &mut HashMap<String, Held>,
    execs: &mut super::exec::Execs,
    state_root: &Path,
    request: Request,
) -> Result<Response, String> {
    match request {
        Request::Create {
            id,
            bundle,
            log,
            log_rotation,
        } => {
            if held.contains_key(&id) {
                return Err(format!("container {id} exists"));
            }
            let config: serde_json::Value = std::fs::read(bundle.join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| format!("{}: no readable config.json", bundle.display()))?;
            let cgroups_path = config["linux"]["cgroupsPath"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let (out_read, out_write) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
            let (err_read, err_write) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
            let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
            let container = ContainerBuilder::new(id.clone(), SyscallType::Linux)
                .with_executor(DefaultExecutor {})
                .with_root_path(state_root)
                .map_err(|e| format!("state root: {e}"))?
                .with_stdin(OwnedFd::from(null))
                .with_stdout(out_write)
                .with_stderr(err_write)
                .validate_id()
                .map_err(|e| format!("container id {id:?}: {e}"))?
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| format!("creating {id}: {e}"))?;
            let log_writer = super::logs::LogWriter::open(&log, log_rotation)
                .map_err(|e| format!("{}: {e}", log.display()))?;
            super::logs::copy_stream(out_read, "stdout", log_writer.clone());
            super::logs::copy_stream(err_read, "stderr", log_writer);
            let pid = container.pid().map(|pid| pid.as_raw());
            held.insert(
                id.clone(),
                Held {
                    container,
                    state: ContainerState {
                        id,
                        status: Status::Created,
                        pid,
                        exit_code: None,
                        signal: None,
                        created_at: now(),
                        started_at: None,
                        finished_at: None,
                        oom_killed: false,
                    },
                    cgroups_path,
                    waiters: Vec::new(),
                },
            );
            Ok(Response::Ok)
        }
        Request::Start { id } => {
            let entry = held
                .get_mut(&id)
                .ok_or_else(|| format!("no container {id}"))?;
            entry
                .container
                .start()
                .map_err(|e| format!("starting {id}: {e}"))?;
            if entry.state.status == Status::Created {
                entry.state.status = Status::Running;
            }
            entry.state.started_at = Some(now());
            Ok(Response::Ok)
        }
        Request::Kill { id, signal } => {
            let entry = held
                .get_mut(&id)
                .ok_or_else(|| format!("no container {id}"))?;
            if entry.state.status == Status::Exited {
                return Ok(Response::Ok);
            }
            let everyone = signal == nix::sys::signal::Signal::SIGKILL as i32;
            let signal = libcontainer::signal::Signal::try_from(signal)
                .map_err(|e| format!("signal {signal}: {e}"))?;
            // Like runc and containerd: a signal goes to the container's
            // init (its process decides what its children get); SIGKILL
            // goes to every process of the container.
            entry
                .container
                .kill(signal, everyone)
                .map_err(|e| format!("signalling {id}: {e}"))?;
            Ok(Response::Ok)
        }
        Request::Delete { id } => {
            let Some(mut entry) = held.remove(&id) else {
                return Ok(Response::Ok);
            };
            let released = entry.state.status == Status::Exited
                && release_exited(&entry.container.root, &entry.cgroups_path)
                    .inspect_err(|error| {
                        tracing::warn!(%id, %error, "releasing an exited container; libcontainer deletes it")
                    })
                    .is_ok();
            if !released && let Err(error) = entry.container.delete(true) {
                let message = format!("deleting {id}: {error}");
                held.insert(id, entry);
                return Err(message);
            }
            for waiter in entry.waiters.drain(..) {
                let _ = waiter.send(Response::Error {
                    message: format!("container {id} was deleted before it exited"),
                });
            }
            Ok(Response::Ok)
        }
        Request::State => {
            reap(held, execs);
            let mut containers: Vec<ContainerState> =
                held.values().map(|h| h.state.clone()).collect();
            containers.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(Response::State { containers })
        }
        Request::Shutdown
        | Request::Wait { .. }
        | Request::Exec { .. }
        | Request::ExecWait { .. }
        | Request::ExecKill { .. } => Err("handled by the main loop".into()),
    }
}

/// Deletes a container whose init this shim has reaped: its cgroup and
/// its libcontainer state, which is all `Container::delete` does for a
/// stopped container without hooks (orch sets none). Done here because
/// libcontainer's v1 cgroup manager finds each controller's mount by
/// reading /proc/self/mountinfo and /proc/self/cgroup through pathrs'
/// checked procfs (two reads per controller): about 1 ms a container on
/// the hybrid hosts, more than the rmdirs themselves, and growing with the
/// host's mount table. Anything that fails here is left to libcontainer's
/// delete.
fn release_exited(container_root: &Path, cgroups_path: &str) -> Result<(), String> {
    if !cgroups_path.starts_with('/') {
        return Err("no absolute cgroupsPath".into());
    }
    // Every container has a pid namespace of its own, whose processes the
    // kernel killed and reaped with its init; this only makes sure.
    crate::runtime::cgroups::kill_all(cgroups_path);
    crate::runtime::cgroups::remove_waiting_while_busy(cgroups_path)
        .map_err(|e| format!("cgroup {cgroups_path}: {e}"))?;
    crate::files::remove_tree(container_root)
        .map_err(|error| format!("{}: {error}", container_root.display()))
}

/// Collects every exited child; records the containers' and the exec'd
/// processes' exit codes.
fn reap(held: &mut HashMap<String, Held>, execs: &mut super::exec::Execs) {
    loop {
        let (pid, code, signal) =
            match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code, None),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid, 128 + signal as i32, Some(signal as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
        // Only a container still running can be this pid: an exited one's
        // pid may since have been reused by an exec'd process.
        if let Some(entry) = held
            .values_mut()
            .find(|h| h.state.status != Status::Exited && h.state.pid == Some(pid.as_raw()))
        {
            entry.state.status = Status::Exited;
            entry.state.exit_code = Some(code);
            entry.state.signal = signal;
            entry.state.finished_at = Some(now());
            entry.state.oom_killed = oom_kills(&entry.cgroups_path) > 0;
            let _ = entry.container.refresh_status();
            for waiter in entry.waiters.drain(..) {
                let _ = waiter.send(Response::State {
                    containers: vec![entry.state.clone()],
                });
            }
        } else {
            execs.exited(pid.as_raw(), code);
        }
    }
}

/// The OOM kills recorded for a cgroup (v1 memory controller, or v2).
fn oom_kills(cgroups_path: &str) -> u64 {
    let relative = cgroups_path.trim_start_matches('/');
    let candidates: [(PathBuf, &str); 3] = [
        (
            Path::new("/sys/fs/cgroup/memory")
                .join(relative)
                .join("memory.oom_control"),
            "oom_kill",
        ),
        (
            Path::new("/sys/fs/cgroup/unified")
                .join(relative)
                .join("memory.events"),
            "oom_kill",
        ),
        (
            Path::new("/sys/fs/cgroup")
                .join(relative)
                .join("memory.events"),
            "oom_kill",
        ),
    ];
    for (path, field) in candidates {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Some(count) = text.lines().find_map(|line| {
                let (name, value) = line.split_once(' ')?;
                (name == field)
                    .then(|| value.trim().parse::<u64>().ok())
                    .flatten()
            })
        {
            return count;
        }
    }
    0
}
