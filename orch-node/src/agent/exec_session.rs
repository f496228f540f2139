//! An exec session for the API server (`orchctl exec`): a process started
//! in the running container through the pod's shim, its output streamed
//! out and the caller's input, terminal size and end of input streamed
//! in; the exit code last.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::Path;
use std::time::Duration;

use orch_core::api::ApiError;
use orch_core::api::proto::{ExecInput, ExecOutput, ExecStart, exec_input, exec_output};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::container_logs::{container_name, invalid, pod_dir};
use crate::runtime::exec::{self, ExecIo, ExecOptions};
use crate::runtime::shim::client::ShimClient;
use crate::runtime::shim::protocol::Status as ContainerStatus;

/// How long output still in flight is awaited once the process exited
/// (a child it left behind may hold its stdout open forever).
const DRAIN: Duration = Duration::from_secs(2);

/// How long a process whose caller left has after SIGHUP.
const HANG_UP_GRACE: Duration = Duration::from_secs(5);

nix::ioctl_write_ptr_bad!(set_window_size, nix::libc::TIOCSWINSZ, nix::pty::Winsize);

type Output = mpsc::Sender<Result<ExecOutput, Status>>;

/// Starts the session `inbound` opens (its first message is the start).
pub async fn run(
    pods_dir: &Path,
    mut inbound: Streaming<ExecInput>,
) -> Result<mpsc::Receiver<Result<ExecOutput, Status>>, Status> {
    let Some(ExecInput {
        input: Some(exec_input::Input::Start(start)),
    }) = inbound.message().await?
    else {
        return Err(invalid(
            "an exec stream starts with its start message".into(),
        ));
    };
    let ExecStart {
        container,
        command,
        stdin,
        tty,
        pod_uid,
        name,
        ..
    } = start;
    if command.is_empty() {
        return Err(invalid("exec: a command is required".into()));
    }
    let dir = pod_dir(pods_dir, &pod_uid)?;
    let container = container_name(&container)?.to_string();
    let (process, io) = tokio::task::spawn_blocking(move || {
        let running = ShimClient::new(&dir)
            .state()
            .map_err(|e| ApiError::Unavailable(e.to_string()).to_status())?
            .into_iter()
            .filter(|c| c.status == ContainerStatus::Running)
            .filter_map(|c| {
                let (base, attempt) = super::pods::instance_of(&c.id)?;
                (base == container).then(|| (attempt, c.id.clone()))
            })
            .max()
            .map(|(_, id)| id)
            .ok_or_else(|| {
                invalid(format!(
                    "container {container:?} in pod {name:?} is not running"
                ))
            })?;
        exec::start(&dir, &running, command, ExecOptions { stdin, tty })
            .map_err(|e| invalid(e.to_string()))
    })
    .await
    .map_err(|_| Status::internal("the exec thread died"))??;

    // The pumps and the exit code go through `inner`; one forwarder
    // passes them on and ends the session at the exit code, so a child
    // left holding stdout cannot keep it open.
    let (output, inner) = mpsc::channel(16);
    let (readers, input) = match io {
        ExecIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let readers = vec![
                pump(stdout, output.clone(), exec_output::Output::Stdout),
                pump(stderr, output.clone(), exec_output::Output::Stderr),
            ];
            (readers, stdin.map(|fd| (fd, false)))
        }
        ExecIo::Terminal { master } => {
            let reader = master
                .try_clone()
                .map_err(|e| Status::internal(format!("the terminal: {e}")))?;
            (
                vec![pump(reader, output.clone(), exec_output::Output::Stdout)],
                Some((master, true)),
            )
        }
    };
    let process = std::sync::Arc::new(process);
    tokio::spawn(feed(inbound, input));
    let waiting = process.clone();
    std::thread::spawn(move || {
        let exit = waiting.wait();
        let deadline = std::time::Instant::now() + DRAIN;
        for reader in readers {
            while !reader.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let last = match exit {
            Ok(code) => Ok(ExecOutput {
                output: Some(exec_output::Output::ExitCode(code)),
            }),
            Err(error) => Err(Status::internal(error.to_string())),
        };
        let _ = output.blocking_send(last);
    });
    let (session, receiver) = mpsc::channel(16);
    tokio::spawn(forward(inner, session, process));
    Ok(receiver)
}

/// Passes the session's output on until the exit code; when the caller
/// is gone first, hangs the process up (SIGHUP, then SIGKILL), as closing
/// a terminal would.
async fn forward(
    mut inner: mpsc::Receiver<Result<ExecOutput, Status>>,
    session: Output,
    process: std::sync::Arc<exec::ExecProcess>,
) {
    loop {
        let message = tokio::select! {
            message = inner.recv() => message,
            () = session.closed() => None,
        };
        let Some(message) = message else { break };
        let last = !matches!(
            message,
            Ok(ExecOutput {
                output: Some(exec_output::Output::Stdout(_) | exec_output::Output::Stderr(_))
            })
        );
        if session.send(message).await.is_err() {
            break;
        }
        if last {
            return;
        }
    }
    // The caller left before the process ended.
    let hang_up = process.clone();
    let _ = tokio::task::spawn_blocking(move || hang_up.kill(nix::libc::SIGHUP)).await;
    tokio::time::sleep(HANG_UP_GRACE).await;
    let _ = tokio::task::spawn_blocking(move || process.kill(nix::libc::SIGKILL)).await;
}

/// Copies what the process writes to `fd` into the session's output.
fn pump(
    fd: OwnedFd,
    output: Output,
    wrap: fn(Vec<u8>) -> exec_output::Output,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut file = std::fs::File::from(fd);
        let mut buffer = vec![0u8; 32 * 1024];
        // A terminal's master reads EIO once the last process on it left.
        while let Ok(read @ 1..) = file.read(&mut buffer) {
            let message = ExecOutput {
                output: Some(wrap(buffer[..read].to_vec())),
            };
            if output.blocking_send(Ok(message)).is_err() {
                return;
            }
        }
    })
}

/// Writes the caller's input to the process: stdin bytes, the end of
/// stdin, a terminal's new size. Dropping the descriptor (the caller is
/// gone or closed stdin) gives the process end-of-file, or hangs up its
/// terminal.
async fn feed(mut inbound: Streaming<ExecInput>, input: Option<(OwnedFd, bool)>) {
    let Some((fd, terminal)) = input else {
        return;
    };
    // Bounded: a process not reading its stdin holds the caller back
    // (gRPC flow control) rather than filling the agent's memory.
    let (bytes, mut queue) = mpsc::channel::<Vec<u8>>(16);
    // Its own copy of a terminal's master, for setting the size.
    let control = if terminal { fd.try_clone().ok() } else { None };
    std::thread::spawn(move || {
        let mut file = std::fs::File::from(fd);
        while let Some(data) = queue.blocking_recv() {
            if file.write_all(&data).is_err() {
                return;
            }
        }
    });
    while let Ok(Some(message)) = inbound.message().await {
        match message.input {
            Some(exec_input::Input::Stdin(data)) => {
                // The writer stopped (the process closed its stdin).
                let Ok(()) = bytes.send(data).await else {
                    break;
                };
            }
            Some(exec_input::Input::CloseStdin(true)) => break,
            Some(exec_input::Input::Resize(size)) => {
                let Some(control) = &control else { continue };
                let size = nix::pty::Winsize {
                    ws_row: size.height.min(u16::MAX as u32) as u16,
                    ws_col: size.width.min(u16::MAX as u32) as u16,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: `control` is an open descriptor of the terminal's
                // master; the ioctl only reads `size`.
                let _ = unsafe { set_window_size(control.as_raw_fd(), &size) };
            }
            _ => {}
        }
    }
    drop(bytes);
    drop(control);
}
