//! The manifest corpus under `tests/manifests/`:
//! - `valid/NAME.{yaml,json}` must load (decode, default, validate). Its
//!   warnings must be exactly the lines of `valid/NAME.warnings` (none when
//!   that file is absent), and every object must survive a YAML round trip.
//! - `invalid/NAME.{yaml,json}` must fail; every line of
//!   `invalid/NAME.expected` must appear in the error text.
//!
//! Messages name the file by its file name, so the expectations don't depend
//! on where the checkout is.

use std::path::{Path, PathBuf};

use orch_core::manifest::{Document, Warning, WarningReason, load_str, parse_str};

fn corpus(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("manifests")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "json")
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn sidecar(path: &Path, extension: &str) -> Option<String> {
    std::fs::read_to_string(path.with_extension(extension)).ok()
}

fn load(path: &Path) -> Result<Vec<Document>, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    load_str(&text, &file_name(path)).map_err(|e| e.to_string())
}

#[test]
fn valid_manifests_load_with_exactly_the_expected_warnings() {
    let mut failures = Vec::new();
    for path in corpus("valid") {
        let documents = match load(&path) {
            Ok(documents) => documents,
            Err(error) => {
                failures.push(format!(
                    "{}: expected to load, got:\n{error}",
                    path.display()
                ));
                continue;
            }
        };
        assert!(!documents.is_empty(), "{}: no objects", path.display());
        let mut warnings: Vec<String> = documents
            .iter()
            .flat_map(|d| d.warnings.iter().map(ToString::to_string))
            .collect();
        warnings.sort();
        let mut expected: Vec<String> = sidecar(&path, "warnings")
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        expected.sort();
        if warnings != expected {
            failures.push(format!(
                "{}: warnings differ\n  got:      {warnings:#?}\n  expected: {expected:#?}",
                path.display()
            ));
        }
        for document in &documents {
            let yaml = serde_yaml_ng::to_string(&document.object).expect("objects serialize");
            let again = parse_str(&yaml, "round-trip").unwrap_or_else(|e| {
                panic!(
                    "{}: re-reading its own output failed: {e}\n{yaml}",
                    path.display()
                )
            });
            assert_eq!(again.len(), 1);
            assert_eq!(
                again[0].object,
                document.object,
                "{}: round trip changed the object",
                path.display()
            );
            // Defaulting adds no field the registry would warn about: the
            // output warns about exactly the unsupported fields the input had.
            let paths = |warnings: &[Warning]| -> Vec<String> {
                warnings
                    .iter()
                    .filter(|w| w.reason == WarningReason::Unsupported)
                    .map(|w| w.path.clone())
                    .collect()
            };
            assert_eq!(
                paths(&again[0].warnings),
                paths(&document.warnings),
                "{}: defaulted output warns differently",
                path.display()
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn invalid_manifests_fail_with_the_expected_errors() {
    let mut failures = Vec::new();
    for path in corpus("invalid") {
        let expected = sidecar(&path, "expected")
            .unwrap_or_else(|| panic!("{}: no .expected file beside it", path.display()));
        match load(&path) {
            Ok(_) => failures.push(format!("{}: loaded, but must fail", path.display())),
            Err(error) => {
                for line in expected.lines().filter(|l| !l.trim().is_empty()) {
                    if !error.contains(line) {
                        failures.push(format!(
                            "{}: error lacks `{line}`; the error was:\n{error}",
                            path.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
