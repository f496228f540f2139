//! orch-shim: the shim of one pod, started by orch-node (not for people):
//! `orch-shim --pod-dir DIR --runtime-fd N [--runtime-call-timeout SECONDS]`,
//! where descriptor N (0, stdin, as the agent starts it) is a sealed copy
//! of orch-runtime for its libcontainer calls, and a call that has not
//! answered within the timeout (default 20 s, under the agent's 30 s wait
//! for the shim) is killed. It lives as long as its pod, so it is a
//! program of its own and stays small: it links no libcontainer (see
//! `orch_node::runtime::shim::server`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

struct Args {
    pod_dir: PathBuf,
    runtime_fd: i32,
    call_limit: Duration,
}

const USAGE: &str = "orch-shim --pod-dir DIR --runtime-fd N [--runtime-call-timeout SECONDS]";

/// Three flags, read by hand: a parser library would double what the shim
/// maps.
fn parse(mut args: impl Iterator<Item = std::ffi::OsString>) -> Result<Args, String> {
    let mut pod_dir = None;
    let mut runtime_fd = None;
    let mut call_limit = orch_node::runtime::shim::runtime_process::DEFAULT_CALL_LIMIT;
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{}: a value is missing", flag.to_string_lossy()))?;
        match flag.to_str() {
            Some("--pod-dir") => pod_dir = Some(PathBuf::from(value)),
            Some("--runtime-fd") => {
                let text = value.to_string_lossy();
                runtime_fd = Some(
                    text.parse::<i32>()
                        .map_err(|_| format!("--runtime-fd {text:?}: not a descriptor number"))?,
                );
            }
            Some("--runtime-call-timeout") => {
                let text = value.to_string_lossy();
                call_limit = text
                    .parse::<u64>()
                    .ok()
                    .filter(|seconds| *seconds > 0)
                    .map(Duration::from_secs)
                    .ok_or_else(|| {
                        format!("--runtime-call-timeout {text:?}: a positive number of seconds")
                    })?;
            }
            _ => {
                return Err(format!(
                    "unknown flag {} (usage: {USAGE})",
                    flag.to_string_lossy()
                ));
            }
        }
    }
    Ok(Args {
        pod_dir: pod_dir.ok_or("--pod-dir is required")?,
        runtime_fd: runtime_fd.ok_or("--runtime-fd is required")?,
        call_limit,
    })
}

fn main() -> ExitCode {
    // A session of its own, so the shim outlives the agent and the
    // agent's signals. Done here rather than between the agent's fork and
    // exec, so that the agent can spawn it without a fork. Refused only to
    // a process group leader (a shim started from a shell), which is said
    // in its log below.
    let session = nix::unistd::setsid();
    // Then: a re-exec into a sealed copy keeps the inherited runtime
    // descriptor only while nothing has made it close-on-exec yet.
    if let Err(error) = orch_node::runtime::shim::begin_sealed_with_log() {
        eprintln!("orch-shim: {error}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = session {
        tracing::warn!(%error, "orch-shim: no session of its own; it shares its starter's signals");
    }
    let args = match parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(error) => {
            tracing::error!("orch-shim: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = orch_node::runtime::shim::runtime_process::RuntimeBinary::inherited(
        args.runtime_fd,
        args.call_limit,
    )
    .and_then(|runtime| orch_node::runtime::shim::server::run(&args.pod_dir, runtime));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("orch-shim {}: {error}", args.pod_dir.display());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn parsed(args: &[&str]) -> Result<(String, i32, u64), String> {
        parse(args.iter().map(std::ffi::OsString::from)).map(|a| {
            (
                a.pod_dir.display().to_string(),
                a.runtime_fd,
                a.call_limit.as_secs(),
            )
        })
    }

    #[test]
    fn flags_are_read_and_bad_ones_named() {
        assert_eq!(
            parsed(&["--pod-dir", "/p", "--runtime-fd", "7"]),
            Ok(("/p".into(), 7, 20))
        );
        assert_eq!(
            parsed(&[
                "--pod-dir",
                "/p",
                "--runtime-fd",
                "7",
                "--runtime-call-timeout",
                "3"
            ]),
            Ok(("/p".into(), 7, 3))
        );
        for bad in ["0", "-1", "soon"] {
            let refused = parsed(&[
                "--pod-dir",
                "/p",
                "--runtime-fd",
                "7",
                "--runtime-call-timeout",
                bad,
            ])
            .unwrap_err();
            assert!(
                refused.contains(&format!("--runtime-call-timeout \"{bad}\"")),
                "{refused}"
            );
        }
        let no_fd = parsed(&["--pod-dir", "/p"]).unwrap_err();
        assert!(no_fd.contains("--runtime-fd is required"), "{no_fd}");
        let bad_fd = parsed(&["--pod-dir", "/p", "--runtime-fd", "x"]).unwrap_err();
        assert!(bad_fd.contains("--runtime-fd \"x\""), "{bad_fd}");
        let unknown = parsed(&["--pod", "/p"]).unwrap_err();
        assert!(unknown.contains("unknown flag --pod"), "{unknown}");
        let dangling = parsed(&["--pod-dir"]).unwrap_err();
        assert!(
            dangling.contains("--pod-dir: a value is missing"),
            "{dangling}"
        );
    }
}
