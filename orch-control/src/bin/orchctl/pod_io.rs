//! `orchctl logs` and `orchctl exec`: a pod container's log and commands
//! run in it, streamed through the API server from the pod's node.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::time::Duration;

use anyhow::{Result, bail};
use orch_core::api::proto::{
    ExecInput, ExecStart, PodLogsRequest, TerminalSize, exec_input, exec_output,
};

use super::objects::Connection;

#[derive(clap::Args)]
pub struct LogsArgs {
    /// The pod (NAME or pod/NAME).
    pub pod: String,
    /// The container (needed when the pod has several).
    #[arg(short, long)]
    pub container: Option<String>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Keep streaming until the container exits.
    #[arg(short, long)]
    pub follow: bool,
    /// The previous instance's log (before the last restart).
    #[arg(short, long)]
    pub previous: bool,
    /// The last N lines only; -1 for all.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// Only lines newer than this: 30s, 5m, 1h30m.
    #[arg(long)]
    pub since: Option<String>,
    /// Prefix each line with its RFC 3339 time.
    #[arg(long)]
    pub timestamps: bool,
    /// Stop after this many bytes.
    #[arg(long)]
    pub limit_bytes: Option<i64>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct ExecArgs {
    /// The pod (NAME or pod/NAME).
    pub pod: String,
    /// The container (needed when the pod has several).
    #[arg(short, long)]
    pub container: Option<String>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Give the command a terminal (with -i: an interactive one).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub connection: Connection,
}

fn pod_name(argument: &str) -> Result<String> {
    let name = match argument.split_once('/') {
        Some(("pod" | "pods" | "po", name)) => name,
        Some((kind, _)) => bail!("{argument:?}: logs and exec take pods, not {kind}"),
        None => argument,
    };
    if name.is_empty() {
        bail!("a pod name is required");
    }
    Ok(name.to_string())
}

/// A duration as kubectl's --since takes it: 30s, 5m, 1h30m.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let duration = orch_core::time::parse_duration("--since", text).map_err(anyhow::Error::msg)?;
    if duration.is_zero() {
        bail!("--since {text:?}: expected a duration like 30s, 5m or 1h30m");
    }
    Ok(duration)
}

pub fn logs(args: LogsArgs) -> Result<()> {
    let name = pod_name(&args.pod)?;
    let since_seconds = match &args.since {
        Some(text) => Some(parse_duration(text)?.as_secs() as i64),
        None => None,
    };
    if args.limit_bytes.is_some_and(|l| l <= 0) {
        bail!("--limit-bytes must be greater than 0");
    }
    let request = PodLogsRequest {
        namespace: args.namespace.clone().unwrap_or_else(|| "default".into()),
        name,
        container: args.container.clone().unwrap_or_default(),
        follow: args.follow,
        previous: args.previous,
        tail_lines: (args.tail >= 0).then_some(args.tail),
        since_seconds,
        timestamps: args.timestamps,
        limit_bytes: args.limit_bytes,
        pod_uid: String::new(),
    };
    let (runtime, mut client) = args.connection.session()?;
    runtime.block_on(async move {
        let mut stream = client.pod_logs(request).await?;
        let mut stdout = std::io::stdout();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| orch_core::api::ApiError::from_status(&s))?
        {
            stdout.write_all(&chunk.data)?;
            stdout.flush()?;
        }
        Ok(())
    })
}

/// The terminal's size, from stdin's or stdout's.
fn terminal_size() -> Option<TerminalSize> {
    nix::ioctl_read_bad!(window_size, nix::libc::TIOCGWINSZ, nix::pty::Winsize);
    let mut size = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    for fd in [0, 1] {
        // SAFETY: the ioctl writes a Winsize into `size`, nothing else.
        if unsafe { window_size(fd, &mut size) }.is_ok() && size.ws_col > 0 {
            return Some(TerminalSize {
                width: u32::from(size.ws_col),
                height: u32::from(size.ws_row),
            });
        }
    }
    None
}

/// Puts the local terminal in raw mode (keys go to the remote side as
/// typed) until dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = nix::sys::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

/// Runs the command; its exit code.
pub fn exec(args: ExecArgs) -> Result<i32> {
    let name = pod_name(&args.pod)?;
    let start = ExecStart {
        namespace: args.namespace.clone().unwrap_or_else(|| "default".into()),
        name,
        container: args.container.clone().unwrap_or_default(),
        command: args.command.clone(),
        stdin: args.stdin,
        tty: args.tty,
        pod_uid: String::new(),
    };
    let (runtime, mut client) = args.connection.session()?;
    let (input, inbound) = tokio::sync::mpsc::channel::<ExecInput>(16);
    let interactive = args.tty && args.stdin && std::io::stdin().is_terminal();
    if args.tty
        && let Some(size) = terminal_size()
    {
        let _ = input.try_send(ExecInput {
            input: Some(exec_input::Input::Resize(size)),
        });
    }
    if args.stdin {
        let input = input.clone();
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buffer = vec![0u8; 32 * 1024];
            while let Ok(read @ 1..) = stdin.read(&mut buffer) {
                let message = ExecInput {
                    input: Some(exec_input::Input::Stdin(buffer[..read].to_vec())),
                };
                if input.blocking_send(message).is_err() {
                    return;
                }
            }
            let _ = input.blocking_send(ExecInput {
                input: Some(exec_input::Input::CloseStdin(true)),
            });
        });
    }
    let _raw = if interactive { RawMode::enter() } else { None };
    let code = runtime.block_on(async move {
        let mut stream = client.pod_exec(start, inbound).await?;
        let mut resized = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
        let mut code = None;
        loop {
            let message = tokio::select! {
                message = stream.message() => message.map_err(|s| orch_core::api::ApiError::from_status(&s))?,
                _ = resized.recv(), if args.tty => {
                    if let Some(size) = terminal_size() {
                        let _ = input.send(ExecInput { input: Some(exec_input::Input::Resize(size)) }).await;
                    }
                    continue;
                }
            };
            let Some(message) = message else { break };
            match message.output {
                Some(exec_output::Output::Stdout(data)) => {
                    let mut out = std::io::stdout();
                    out.write_all(&data)?;
                    out.flush()?;
                }
                Some(exec_output::Output::Stderr(data)) => {
                    let mut err = std::io::stderr();
                    err.write_all(&data)?;
                    err.flush()?;
                }
                Some(exec_output::Output::ExitCode(exit)) => code = Some(exit),
                None => {}
            }
        }
        anyhow::Ok(code)
    })?;
    drop(_raw);
    match code {
        Some(code) => Ok(code),
        None => bail!("the session ended without the command's exit code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_kubectl_reads_them() {
        assert_eq!(parse_duration("30s").expect("30s").as_secs(), 30);
        assert_eq!(parse_duration("1h30m").expect("1h30m").as_secs(), 5400);
        for bad in ["", "5", "m", "5d", "1.5h"] {
            let error = parse_duration(bad).expect_err(bad).to_string();
            assert!(error.contains("--since"), "{error}");
        }
        assert_eq!(pod_name("pod/web").expect("pod/web"), "web");
        assert!(pod_name("deploy/web").is_err());
    }
}
