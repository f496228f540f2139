//! orchctl as a user runs it: real process, real files, exit codes.

use std::io::Write as _;
use std::process::{Command, Stdio};

const ORCHCTL: &str = env!("CARGO_BIN_EXE_orchctl");

fn corpus(path: &str) -> String {
    format!("{}/../tests/manifests/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn validate_accepts_a_directory_and_warns_on_ignored_fields() {
    let output = Command::new(ORCHCTL)
        .args(["validate", "-f", &corpus("valid")])
        .output()
        .expect("run orchctl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("deployments.apps/web valid"), "{stdout}");
    assert!(
        stdout.contains("endpointslices.discovery.k8s.io/web-abc12 valid"),
        "{stdout}"
    );
    assert!(
        stderr.contains("Warning: ")
            && stderr.contains(
                "spec.template.spec.containers[0].lifecycle.postStart: not supported by orch yet, ignored"
            ),
        "{stderr}"
    );
}

#[test]
fn validate_fails_naming_file_and_field() {
    let output = Command::new(ORCHCTL)
        .args(["validate", "-f", &corpus("invalid/bad-quantity.yaml")])
        .output()
        .expect("run orchctl");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("bad-quantity.yaml: document 1: Pod \"hungry\" is invalid"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.containers[0].resources.limits[memory]: Invalid value: \"12Qi\""),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing printed as valid");
}

#[test]
fn validate_reads_stdin_and_prints_defaulted_yaml() {
    let mut child = Command::new(ORCHCTL)
        .args(["validate", "-f", "-", "-o", "yaml"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run orchctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(
            b"apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n",
        )
        .expect("write manifest");
    let output = child.wait_with_output().expect("orchctl exits");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for defaulted in [
        "type: ClusterIP",
        "protocol: TCP",
        "targetPort: 80",
        "sessionAffinity: None",
    ] {
        assert!(
            stdout.contains(defaulted),
            "`{defaulted}` missing from:\n{stdout}"
        );
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let output = Command::new(ORCHCTL)
        .args(["validate", "-f", "/nonexistent/web.yaml"])
        .output()
        .expect("run orchctl");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("/nonexistent/web.yaml: No such file or directory"),
        "{stderr}"
    );
}

/// The systemd units and their environment files in `deploy/systemd` name
/// only flags the binaries take (and every binary flag they name exists).
#[test]
fn the_systemd_units_name_flags_the_binaries_take() {
    let deploy = format!("{}/../deploy/systemd", env!("CARGO_MANIFEST_DIR"));
    let orch_control = env!("CARGO_BIN_EXE_orch-control");
    let orch_node = std::path::Path::new(orch_control).with_file_name("orch-node");
    for (binary, unit, environment) in [
        (
            std::path::PathBuf::from(orch_control),
            "orch-control.service",
            "orch-control.env",
        ),
        (orch_node, "orch-node.service", "orch-node.env"),
    ] {
        let help = Command::new(&binary)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        let known: std::collections::BTreeSet<&str> = help
            .split_whitespace()
            .map(|word| word.trim_end_matches(','))
            .filter(|word| word.starts_with("--"))
            .collect();
        let mut named = 0;
        for file in [unit, environment] {
            let text = std::fs::read_to_string(format!("{deploy}/{file}"))
                .unwrap_or_else(|e| panic!("{deploy}/{file}: {e}"));
            for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
                // `--flag=value` and `VARIABLE=--flag` alike.
                for flag in line
                    .split_whitespace()
                    .flat_map(|word| word.split('='))
                    .filter(|word| word.starts_with("--"))
                {
                    named += 1;
                    assert!(
                        known.contains(flag),
                        "{file} names {flag}, which {} does not take",
                        binary.display()
                    );
                }
            }
        }
        assert!(named > 5, "{unit}: only {named} flags found");
    }
}
