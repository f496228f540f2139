//! Starting a process in a running container (the `orch-runtime`
//! side of an exec; the shim keeps the records, `exec`).
//!
//! libcontainer's tenant builder joins the container's namespaces and
//! cgroup; the process it runs is the container's own process section
//! (user, environment, working directory, capabilities, no_new_privs)
//! with other arguments. libcontainer 0.7 drops the container's seccomp
//! filter for a tenant, so the executor loads it again right before exec,
//! as runc does for `runc exec` (which is why an exec'd process always
//! runs with no_new_privs; see `start`).

use std::os::fd::OwnedFd;
use std::path::Path;

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::LinuxSeccomp;
use libcontainer::syscall::syscall::SyscallType;

use super::calls::{Filter, SeccompExecutor};
use super::exec::ExecStart;

/// Starts a process in running container `id`; its host pid.
pub fn start(
    state_root: &Path,
    id: &str,
    exec_dir: &Path,
    process: ExecStart,
) -> Result<i32, String> {
    process.check()?;
    let ExecStart {
        exec_id,
        args,
        stdin,
        console_socket,
        fds,
    } = process;
    let container =
        Container::load(state_root.join(id)).map_err(|e| format!("loading {id}: {e}"))?;
    // The whole config: a precompiled bundle's own lends its init
    // CAP_SYS_ADMIN, which an exec (always no_new_privs) must not hold.
    let bundle = crate::runtime::bundle::whole_config_dir(container.bundle());
    let config: serde_json::Value = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("{}: no readable config.json", bundle.display()))?;
    let mut process = config["process"].clone();
    if !process.is_object() {
        return Err(format!("{}: no process section", bundle.display()));
    }
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(console_socket.is_some());
    // The container's filter: its precompiled program when libcontainer
    // was given one (`runtime::bundle`), else the config's profile.
    let filter = match crate::runtime::bundle::program_beside(container.bundle())
        .map_err(|e| e.to_string())?
    {
        Some(program) => Some(Filter::Program(program)),
        None => match &config["linux"]["seccomp"] {
            serde_json::Value::Null => None,
            value => Some(Filter::Profile(
                serde_json::from_value::<LinuxSeccomp>(value.clone())
                    .map_err(|e| format!("{}: linux.seccomp: {e}", bundle.display()))?,
            )),
        },
    };
    if filter.is_some() {
        // The filter is loaded after the capabilities are dropped, which
        // the kernel allows only under no_new_privs: an exec'd process
        // always has it (setuid programs do not elevate it), rather than
        // running without the container's filter.
        process["noNewPrivileges"] = serde_json::json!(true);
    }
    std::fs::create_dir_all(exec_dir).map_err(|e| format!("{}: {e}", exec_dir.display()))?;
    let process_file = exec_dir.join(format!("{exec_id}.json"));
    std::fs::write(
        &process_file,
        serde_json::to_vec(&process).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", process_file.display()))?;

    let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
        .with_executor(SeccompExecutor { filter })
        .with_root_path(state_root)
        .map_err(|e| format!("state root: {e}"))?;
    match console_socket {
        Some(socket) => {
            if !fds.is_empty() {
                return Err("exec: descriptors sent with a terminal".into());
            }
            builder = builder.with_console_socket(Some(socket));
        }
        None => {
            let expected = if stdin { 3 } else { 2 };
            if fds.len() != expected {
                return Err(format!(
                    "exec: {} descriptors sent, {expected} expected",
                    fds.len()
                ));
            }
            let mut fds = fds.into_iter();
            let input = match stdin {
                true => fds.next(),
                false => std::fs::File::open("/dev/null").ok().map(OwnedFd::from),
            };
            let (Some(input), Some(output), Some(errors)) = (input, fds.next(), fds.next()) else {
                return Err("exec: missing descriptors".into());
            };
            builder = builder
                .with_stdin(input)
                .with_stdout(output)
                .with_stderr(errors);
        }
    }
    let started = builder
        .as_tenant()
        .with_process(Some(&process_file))
        .with_detach(true)
        .build();
    let _ = std::fs::remove_file(&process_file);
    started
        .map(|pid| pid.as_raw())
        .map_err(|e| format!("exec in {id}: {e}"))
}
