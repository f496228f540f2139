//! `orch-runtime`: the short-lived process a pod's shim starts for
//! each libcontainer call (create and start, exec, a forced delete), as
//! containerd's shim runs `runc`. It runs from the sealed copy the
//! shim was given, reads its call from the socket that is
//! its stdin and answers there; the processes libcontainer makes are its
//! children, and become the shim's (a child subreaper) when it exits.
//!
//! libcontainer makes its caller the parent of a container's init (and
//! of an exec'd process), so only a descendant of the shim may call it;
//! keeping the calls out of the shim itself keeps the shim, which lives
//! as long as its pod, a few MiB (it does not map libcontainer at all).

use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

use super::protocol::{Response, RuntimeCall};
use super::wire::{LineReader, send_line};
use crate::runtime::seccomp_program::{self, Program};

/// Serves the one call that arrives on stdin (a unix socket).
pub fn serve() -> Result<(), String> {
    let control = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("stdin: {e}"))?;
    let control = UnixStream::from(control);
    let mut reader = LineReader::new();
    let (call, fds) =
        next_call(&mut reader, &control)?.ok_or_else(|| "no call arrived on stdin".to_string())?;
    match call {
        RuntimeCall::Create {
            state_root,
            id,
            bundle,
        } => {
            let created = create(&state_root, &id, &bundle, fds);
            let mut container = match created {
                Ok(container) => container,
                Err(message) => return answer(&control, &Response::Error { message }),
            };
            let Some(pid) = container
                .pid()
                .map(|pid| pid.as_raw())
                .filter(|pid| *pid > 0)
            else {
                let _ = delete(&mut container);
                return answer(
                    &control,
                    &Response::Error {
                        message: format!("creating {id}: libcontainer reported no init pid"),
                    },
                );
            };
            if let Err(error) = answer(&control, &Response::Started { pid }) {
                let _ = delete(&mut container);
                return Err(error);
            }
            // Until the shim says start (or goes away), the container's
            // init waits in libcontainer's notify socket.
            let response = match next_call(&mut reader, &control) {
                Ok(Some((RuntimeCall::Start { .. }, _))) => start(&mut container),
                Ok(Some((RuntimeCall::Delete { .. }, _))) => delete(&mut container),
                Ok(Some((other, _))) => {
                    let _ = delete(&mut container);
                    Response::Error {
                        message: format!("{other:?} is no call for a created container (deleted)"),
                    }
                }
                Ok(None) | Err(_) => {
                    // The shim is gone: nobody would ever start it.
                    let _ = delete(&mut container);
                    return Ok(());
                }
            };
            answer(&control, &response)
        }
        RuntimeCall::Start { state_root, id } => answer(&control, &loaded(&state_root, &id, start)),
        RuntimeCall::Delete { state_root, id } => {
            answer(&control, &loaded(&state_root, &id, delete))
        }
        RuntimeCall::Exec {
            state_root,
            id,
            exec_dir,
            exec_id,
            args,
            stdin,
            console_socket,
        } => {
            let started = super::exec_process::start(
                &state_root,
                &id,
                &exec_dir,
                super::exec::ExecStart {
                    exec_id,
                    args,
                    stdin,
                    console_socket,
                    fds,
                },
            );
            answer(
                &control,
                &started.map_or_else(
                    |message| Response::Error { message },
                    |pid| Response::Started { pid },
                ),
            )
        }
    }
}

fn next_call(
    reader: &mut LineReader,
    control: &UnixStream,
) -> Result<Option<(RuntimeCall, Vec<OwnedFd>)>, String> {
    let Some((line, fds)) = reader
        .next(control)
        .map_err(|e| format!("reading the call: {e}"))?
    else {
        return Ok(None);
    };
    let call = serde_json::from_str(&line).map_err(|e| format!("unreadable call {line:?}: {e}"))?;
    Ok(Some((call, fds)))
}

fn answer(control: &UnixStream, response: &Response) -> Result<(), String> {
    let line = serde_json::to_string(response).map_err(|e| e.to_string())?;
    send_line(control, &line, &[]).map_err(|e| format!("answering the shim: {e}"))
}

fn create(
    state_root: &Path,
    id: &str,
    bundle: &Path,
    fds: Vec<OwnedFd>,
) -> Result<Container, String> {
    let [stdin, stdout, stderr]: [OwnedFd; 3] = fds.try_into().map_err(|fds: Vec<OwnedFd>| {
        format!("create: {} descriptors sent, 3 expected", fds.len())
    })?;
    // A precompiled profile: libcontainer runs the config without it and
    // the executor installs the program (`runtime::bundle`).
    let (bundle, filter) = match crate::runtime::bundle::precompiled(bundle)
        .map_err(|e| format!("creating {id}: {e}"))?
    {
        Some((config_dir, program)) => (config_dir, Some(Filter::Program(program))),
        None => (bundle.to_path_buf(), None),
    };
    ContainerBuilder::new(id.to_string(), SyscallType::Linux)
        .with_executor(SeccompExecutor { filter })
        .with_root_path(state_root)
        .map_err(|e| format!("state root: {e}"))?
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .validate_id()
        .map_err(|e| format!("container id {id:?}: {e}"))?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("creating {id}: {e}"))
}

/// `act` on container `id`, loaded from its libcontainer state.
fn loaded(state_root: &Path, id: &str, act: fn(&mut Container) -> Response) -> Response {
    match Container::load(state_root.join(id)) {
        Ok(mut container) => act(&mut container),
        Err(error) => Response::Error {
            message: format!("loading {id}: {error}"),
        },
    }
}

fn start(container: &mut Container) -> Response {
    match container.start() {
        Ok(()) => Response::Ok,
        Err(error) => Response::Error {
            message: format!("starting {}: {error}", container.id()),
        },
    }
}

fn delete(container: &mut Container) -> Response {
    match container.delete(true) {
        Ok(()) => Response::Ok,
        Err(error) => Response::Error {
            message: format!("deleting {}: {error}", container.id()),
        },
    }
}

/// A seccomp filter to install right before the exec.
#[derive(Clone)]
pub(super) enum Filter {
    /// Compiled by the agent (`runtime::bundle`).
    Program(Program),
    /// A profile compiled here, with libcontainer's own libseccomp call.
    Profile(LinuxSeccomp),
}

/// Installs the container's seccomp filter, if any, then runs the
/// process as libcontainer's default executor does.
#[derive(Clone)]
pub(super) struct SeccompExecutor {
    pub filter: Option<Filter>,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        match &self.filter {
            Some(Filter::Program(program)) => seccomp_program::install(program)
                .map_err(|e| ExecutorError::Other(e.to_string()))?,
            Some(Filter::Profile(profile)) => {
                libcontainer::seccomp::initialize_seccomp(profile).map_err(|e| {
                    ExecutorError::Other(format!("loading the seccomp filter: {e}"))
                })?;
            }
            None => {}
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        if let Some(Filter::Program(_)) = &self.filter {
            seccomp_program::installable()
                .map_err(|e| ExecutorValidationError::ArgValidationError(e.to_string()))?;
        }
        DefaultExecutor {}.validate(spec)
    }
}
