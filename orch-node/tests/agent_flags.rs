//! The agent refuses bad flags before it touches anything, naming the
//! flag and why.

use std::process::Command;

fn agent(config: &std::path::Path, state: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_orch-node"))
        .args(["--node-name", "flags-test", "--config"])
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .args([
            "--node-ip",
            "127.0.0.1",
            "--address",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .args(extra)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run orch-node");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_agent_flags_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("node.conf");
    // A config that loads; the flags are refused before any server is
    // reached.
    std::fs::write(
        &config,
        "servers: [\"127.0.0.1:1\"]\ncertificate-authority: |\n  -----BEGIN CERTIFICATE-----\n  AAAA\n  -----END CERTIFICATE-----\n",
    )
    .expect("config");
    let state = dir.path().join("state");
    for (flags, expected) in [
        (
            &["--container-log-max-files", "1"][..],
            "--container-log-max-files: at least 2",
        ),
        (
            &["--container-log-max-size", "lots"][..],
            "--container-log-max-size",
        ),
        (
            &["--container-log-max-size", "10"][..],
            "--container-log-max-size: at least 1Ki",
        ),
        (&[][..], "no client-certificate and client-key"),
    ] {
        let (ok, stderr) = agent(&config, &state, flags);
        assert!(!ok, "{flags:?} was accepted");
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
    }
}
