//! The shim: one small process per pod (`orch-shim --pod-dir DIR
//! --runtime-fd N`; the agent hands orch-runtime on stdin, N = 0).
//!
//! libcontainer may not be called concurrently (it chdir()s the process)
//! and makes its caller the parent of every container init, so the agent
//! never calls it: each pod's shim has it called, one call at a time, by
//! an `orch-runtime` process it starts from the sealed copy the agent
//! handed it (`calls`); what that process makes becomes the shim's
//! when it exits. The shim is a child subreaper, reaps its containers and
//! records their exit codes, holds their stdout/stderr and writes the log
//! files, runs from a sealed memfd (a process that could reach
//! /proc/<shim>/exe cannot overwrite the binary), and outlives an agent
//! restart: the agent finds it again by its socket.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::client::socket_path;
use super::protocol::{ContainerState, Request, Response, RuntimeCall, Status};
use super::runtime_process::{RuntimeBinary, RuntimeProcess};
use super::wire::Reply;

enum Event {
    Request(Request, Vec<OwnedFd>, Reply),
    ChildExited,
}

struct Held {
    state: ContainerState,
    cgroups_path: String,
    /// The runtime process holding the container from its create until
    /// its start (or delete).
    creator: Option<RuntimeProcess>,
    /// `Wait` requests answered when the container exits.
    waiters: Vec<Reply>,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs the shim of the pod in `pod_dir` until told to shut down;
/// `runtime` runs its libcontainer calls.
pub fn run(pod_dir: &Path, runtime: RuntimeBinary) -> Result<(), String> {
    // The shim lives as long as its pod: one malloc arena for its few
    // threads, not one each (~100 KiB less resident). Before any thread.
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe { nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1) };
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
            if !read_request(stream, &requests) {
                return;
            }
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
                    reply.send(&Response::Ok);
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
                                &runtime,
                                &state_root,
                                &id,
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
                    reply.send(&response.unwrap_or_else(|message| Response::Error { message }));
                }
                Request::Wait { id } => {
                    reap(&mut held, &mut execs);
                    match held.get_mut(&id) {
                        None => {
                            reply.send(&Response::Error {
                                message: format!("no container {id}"),
                            });
                        }
                        Some(entry) if entry.state.status == Status::Exited => {
                            reply.send(&Response::State {
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
                    reply.send(&response);
                }
                request => {
                    let response = handle(&mut held, &mut execs, &runtime, &state_root, request)
                        .unwrap_or_else(|message| Response::Error { message });
                    reply.send(&response);
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

/// Reads the one request of a connection and queues it for the main
/// loop, which answers on the connection. Read here, by the thread that
/// accepts, rather than by a thread per connection: the only client is
/// the agent (the socket is root's), which writes its request as it
/// connects, and a thread's start was a third of a call's time. A request
/// not read whole within `REQUEST_LIMIT` (a client silent, or dribbling)
/// is dropped, so such a client delays the calls behind it by that much
/// at most. False once the main loop is gone.
fn read_request(stream: UnixStream, requests: &mpsc::Sender<Event>) -> bool {
    const REQUEST_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
    let mut reader = super::wire::LineReader::new();
    let deadline = std::time::Instant::now() + REQUEST_LIMIT;
    let Ok(Some((line, fds))) = reader.next_within(&stream, deadline) else {
        return true;
    };
    let reply = Reply::new(stream);
    match serde_json::from_str::<Request>(&line) {
        Ok(request) => requests.send(Event::Request(request, fds, reply)).is_ok(),
        Err(error) => {
            reply.send(&Response::Error {
                message: format!("unreadable request: {error}"),
            });
            true
        }
    }
}

fn handle(
    held: &mut HashMap<String, Held>,
    execs: &mut super::exec::Execs,
    runtime: &RuntimeBinary,
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
            let cgroups_path = cgroups_path(&bundle)?;
            // Close-on-exec: only the container gets them (SCM_RIGHTS).
            let pipe = || {
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
            };
            let ((out_read, out_write), (err_read, err_write)) = (pipe()?, pipe()?);
            let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
            let mut creator = RuntimeProcess::start(runtime)?;
            let created = creator.call(
                &RuntimeCall::Create {
                    state_root: state_root.to_path_buf(),
                    id: id.clone(),
                    bundle,
                },
                &[null.as_fd(), out_write.as_fd(), err_write.as_fd()],
            );
            // The container holds the write ends now: the copiers see the
            // end of its output when it is gone.
            drop((null, out_write, err_write));
            let pid = match created {
                Ok(Response::Started { pid }) if pid > 0 => pid,
                failed => {
                    // A runtime process that died half way leaves the
                    // container behind: delete it, or every retry of this
                    // id would be refused.
                    drop(creator);
                    // Done here, not by another runtime call, which could
                    // hang as this one may have: its processes killed,
                    // its cgroup and state removed (libcontainer's delete
                    // only where that fails).
                    let _ = release_or_delete(&id, &cgroups_path, runtime, state_root);
                    return Err(match failed {
                        Err(message) => message,
                        Ok(other) => format!("creating {id}: unexpected answer {other:?}"),
                    });
                }
            };
            let log_writer = super::logs::LogWriter::open(&log, log_rotation)
                .map_err(|e| format!("{}: {e}", log.display()))?;
            super::logs::copy_stream(out_read, "stdout", log_writer.clone());
            super::logs::copy_stream(err_read, "stderr", log_writer);
            held.insert(
                id.clone(),
                Held {
                    state: ContainerState {
                        id,
                        status: Status::Created,
                        pid: Some(pid),
                        exit_code: None,
                        signal: None,
                        created_at: now(),
                        started_at: None,
                        finished_at: None,
                        oom_killed: false,
                    },
                    cgroups_path,
                    creator: Some(creator),
                    waiters: Vec::new(),
                },
            );
            Ok(Response::Ok)
        }
        Request::Start { id } => {
            let entry = held
                .get_mut(&id)
                .ok_or_else(|| format!("no container {id}"))?;
            if entry.state.status != Status::Created {
                return Err(format!("container {id} was started already"));
            }
            let call = RuntimeCall::Start {
                state_root: state_root.to_path_buf(),
                id: id.clone(),
            };
            // The process that created it, or (it answered a failed start
            // and exited) a new one.
            call_runtime(entry.creator.take(), runtime, &call)
                .map_err(|e| format!("starting {id}: {e}"))?;
            entry.state.status = Status::Running;
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
            let signal = Signal::try_from(signal).map_err(|e| format!("signal {signal}: {e}"))?;
            let init = entry
                .state
                .pid
                .ok_or_else(|| format!("container {id} has no process"))?;
            // Like runc and containerd: a signal goes to the container's
            // init (its process decides what its children get); SIGKILL
            // goes to every process of the container. Its init is not
            // reaped yet, so the pid is still its own.
            nix::sys::signal::kill(Pid::from_raw(init), signal)
                .map_err(|e| format!("signalling {id}: {e}"))?;
            // Its pid namespace dies with its init; anything else left in
            // its own cgroup (checked to be one below the root at create)
            // goes too.
            if signal == Signal::SIGKILL {
                crate::runtime::cgroups::kill_all(&entry.cgroups_path);
            }
            Ok(Response::Ok)
        }
        Request::Delete { id } => {
            let Some(mut entry) = held.remove(&id) else {
                return Ok(Response::Ok);
            };
            let deleted = match entry.creator.take() {
                // Created, never started: its creator deletes it.
                creator @ Some(_) => {
                    call_runtime(creator, runtime, &delete_call(state_root, &id)).map(drop)
                }
                None => delete(&id, &entry, runtime, state_root),
            };
            if let Err(error) = deleted {
                let message = format!("deleting {id}: {error}");
                held.insert(id, entry);
                return Err(message);
            }
            for waiter in entry.waiters.drain(..) {
                waiter.send(&Response::Error {
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

/// The bundle's `linux.cgroupsPath`, which must be absolute and below the
/// root. Read into a struct of that one field: the rest of config.json
/// (the seccomp profile is most of it) is skipped, not built as a tree.
fn cgroups_path(bundle: &Path) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        linux: Linux,
    }
    #[derive(Default, serde::Deserialize)]
    struct Linux {
        #[serde(default, rename = "cgroupsPath")]
        cgroups_path: String,
    }
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cgroups_path = serde_json::from_slice::<Config>(&bytes)
        .map(|config| config.linux.cgroups_path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // The shim kills and removes this cgroup itself: never the root.
    if !cgroups_path.starts_with('/') || cgroups_path.trim_matches('/').is_empty() {
        return Err(format!(
            "{}: linux.cgroupsPath {cgroups_path:?} is not an absolute path below the root",
            path.display()
        ));
    }
    Ok(cgroups_path)
}

/// Deletes a started container: an exited one here (`release_exited`),
/// a running one, or one that fails that, through libcontainer's delete.
fn delete(
    id: &str,
    entry: &Held,
    runtime: &RuntimeBinary,
    state_root: &Path,
) -> Result<(), String> {
    if entry.state.status == Status::Exited {
        return release_or_delete(id, &entry.cgroups_path, runtime, state_root);
    }
    call_runtime(None, runtime, &delete_call(state_root, id)).map(drop)
}

/// Removes container `id`, exited or never started, here
/// (`release_exited`); where that fails and libcontainer still has its
/// state, through libcontainer's delete.
fn release_or_delete(
    id: &str,
    cgroups_path: &str,
    runtime: &RuntimeBinary,
    state_root: &Path,
) -> Result<(), String> {
    let Err(error) = release_exited(&state_root.join(id), cgroups_path) else {
        return Ok(());
    };
    tracing::warn!(%id, %error, "releasing a container; libcontainer deletes it");
    if !state_root.join(id).exists() {
        return Err(error);
    }
    call_runtime(None, runtime, &delete_call(state_root, id)).map(drop)
}

/// Deleting container `id` (forced: libcontainer kills it first).
fn delete_call(state_root: &Path, id: &str) -> RuntimeCall {
    RuntimeCall::Delete {
        state_root: state_root.to_path_buf(),
        id: id.to_string(),
    }
}

/// Makes `call` in `creator` (the runtime process holding a created
/// container), or else in a new runtime process.
fn call_runtime(
    creator: Option<RuntimeProcess>,
    runtime: &RuntimeBinary,
    call: &RuntimeCall,
) -> Result<Response, String> {
    match creator {
        Some(mut creator) => creator.call(call, &[]),
        None => RuntimeProcess::start(runtime)?.call(call, &[]),
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
    // `cgroups_path` was checked at create (absolute, below the root).
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
            for waiter in entry.waiters.drain(..) {
                waiter.send(&Response::State {
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
