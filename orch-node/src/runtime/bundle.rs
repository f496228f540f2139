//! A container's OCI bundle as the agent writes it and orch-runtime runs
//! it.
//!
//! `config.json` is the whole OCI config: what runc or crun would run,
//! what an exec reads its process from, what an operator inspects. When
//! it carries a seccomp profile that can be compiled ahead
//! (`seccomp_program`), the bundle also holds `libcontainer/`: the same
//! config without `linux.seccomp` (and, without no_new_privs, with
//! CAP_SYS_ADMIN in the permitted set only, so the filter can still be
//! installed after the capabilities are dropped), and `seccomp.bpf`, the
//! compiled profile. orch-runtime hands libcontainer that directory and
//! installs the program itself right before the exec. The agent compiles
//! each distinct profile once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use libcontainer::oci_spec::runtime::LinuxSeccomp;
use serde_json::{Value, json};
use thiserror::Error;

use super::seccomp_program::{self, Program, ProgramError};

/// The directory libcontainer is given when the profile is precompiled.
pub const PRECOMPILED: &str = "libcontainer";
/// The compiled profile, beside that directory's `config.json`.
pub const PROGRAM: &str = "seccomp.bpf";
/// Profiles compiled by this process, kept at most this many.
const CACHED_PROGRAMS: usize = 64;

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("linux.seccomp: {0}")]
    Seccomp(String),
    #[error("serializing the config: {0}")]
    Json(String),
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error("{path}: {source}")]
    Unreadable { path: PathBuf, source: ProgramError },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the bundle for OCI config `config` into `dir` (which exists).
/// `libcontainer/` is filled under another name and renamed into place,
/// so orch-runtime finds a whole one or none (and then runs
/// `config.json` with libcontainer's own seccomp).
pub fn write(dir: &Path, config: &Value) -> Result<(), BundleError> {
    let precompiled = dir.join(PRECOMPILED);
    let staging = dir.join(format!("{PRECOMPILED}.new"));
    remove_dir(&staging)?;
    let made = precompile(config)?;
    if let Some((runtime_config, program)) = &made {
        std::fs::create_dir(&staging).map_err(io(&staging))?;
        let (program_path, config_path) = (staging.join(PROGRAM), staging.join("config.json"));
        std::fs::write(&program_path, program.to_bytes()).map_err(io(&program_path))?;
        std::fs::write(&config_path, to_json(runtime_config)?).map_err(io(&config_path))?;
    }
    // A bundle rewritten without a profile must not keep an old one.
    remove_dir(&precompiled)?;
    if made.is_some() {
        std::fs::rename(&staging, &precompiled).map_err(io(&precompiled))?;
    }
    replace(&dir.join("config.json"), &to_json(config)?)
}

fn remove_dir(path: &Path) -> Result<(), BundleError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

/// The whole OCI config of the bundle libcontainer was given
/// (`Container::bundle`): `config.json` there, or above it when that is
/// the precompiled directory (whose process holds a lent capability).
pub fn whole_config_dir(config_dir: &Path) -> &Path {
    match config_dir.parent() {
        Some(parent) if config_dir.file_name() == Some(PRECOMPILED.as_ref()) => parent,
        _ => config_dir,
    }
}

/// The directory to give libcontainer and the program to install, when
/// the bundle at `dir` has its profile precompiled.
pub fn precompiled(dir: &Path) -> Result<Option<(PathBuf, Program)>, BundleError> {
    let precompiled = dir.join(PRECOMPILED);
    let program_path = precompiled.join(PROGRAM);
    match std::fs::read(&program_path) {
        Ok(bytes) => Ok(Some((precompiled, read_program(&program_path, &bytes)?))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&program_path)(e)),
    }
}

/// The program of a bundle libcontainer was given (`Container::bundle`):
/// required when that is the precompiled directory (its config has no
/// profile left to fall back on), none otherwise.
pub fn program_beside(config_dir: &Path) -> Result<Option<Program>, BundleError> {
    if whole_config_dir(config_dir) == config_dir {
        return Ok(None);
    }
    let path = config_dir.join(PROGRAM);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    Ok(Some(read_program(&path, &bytes)?))
}

fn read_program(path: &Path, bytes: &[u8]) -> Result<Program, BundleError> {
    Program::from_bytes(bytes).map_err(|source| BundleError::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

/// The config libcontainer runs and the compiled profile, when `config`
/// has a profile the agent can compile.
fn precompile(config: &Value) -> Result<Option<(Value, Arc<Program>)>, BundleError> {
    let section = &config["linux"]["seccomp"];
    if section.is_null() {
        return Ok(None);
    }
    let profile: LinuxSeccomp =
        serde_json::from_value(section.clone()).map_err(|e| BundleError::Seccomp(e.to_string()))?;
    if !seccomp_program::compilable(&profile) {
        return Ok(None);
    }
    let program = compiled(section, &profile)?;
    let mut runtime_config = config.clone();
    if let Some(linux) = runtime_config["linux"].as_object_mut() {
        linux.remove("seccomp");
    }
    // Lent only where a permitted set is listed (orch always lists one):
    // without it libcontainer keeps the full set, CAP_SYS_ADMIN included.
    let process = &mut runtime_config["process"];
    if process["noNewPrivileges"] != json!(true)
        && let Some(caps) = process["capabilities"]["permitted"].as_array_mut()
        && !caps.iter().any(|c| c == "CAP_SYS_ADMIN")
    {
        caps.push(json!("CAP_SYS_ADMIN"));
    }
    Ok(Some((runtime_config, program)))
}

/// `profile` compiled, from this process's cache when it was before.
fn compiled(section: &Value, profile: &LinuxSeccomp) -> Result<Arc<Program>, BundleError> {
    static PROGRAMS: OnceLock<Mutex<HashMap<String, Arc<Program>>>> = OnceLock::new();
    let key = section.to_string();
    let cache = PROGRAMS.get_or_init(Mutex::default);
    if let Some(program) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(program);
    }
    let program = Arc::new(seccomp_program::compile(profile)?);
    if let Ok(mut cache) = cache.lock() {
        if cache.len() >= CACHED_PROGRAMS {
            cache.clear();
        }
        cache.insert(key, program.clone());
    }
    Ok(program)
}

fn to_json(value: &Value) -> Result<Vec<u8>, BundleError> {
    serde_json::to_vec_pretty(value).map_err(|e| BundleError::Json(e.to_string()))
}

/// Writes `bytes` to `path` through a temporary file renamed over it, so
/// a reader never sees half a file.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes).map_err(io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(no_new_privileges: bool, seccomp: bool) -> Value {
        let mut config = json!({
            "process": {
                "args": ["true"],
                "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]},
            },
            "linux": {"cgroupsPath": "/orch/c"},
        });
        if no_new_privileges {
            config["process"]["noNewPrivileges"] = json!(true);
        }
        if seccomp {
            config["linux"]["seccomp"] = crate::runtime::seccomp::default_profile(&[]);
        }
        config
    }

    #[test]
    fn a_profile_is_precompiled_beside_the_whole_config() {
        let dir = tempfile::tempdir().expect("dir");
        let whole = config(false, true);
        write(dir.path(), &whole).expect("written");
        let read = |p: &Path| -> Value {
            serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json")
        };
        assert_eq!(read(&dir.path().join("config.json")), whole);
        let (runtime_dir, program) = precompiled(dir.path()).expect("readable").expect("there");
        assert_eq!(runtime_dir, dir.path().join(PRECOMPILED));
        let runtime = read(&runtime_dir.join("config.json"));
        assert!(runtime["linux"]["seccomp"].is_null());
        assert_eq!(runtime["linux"]["cgroupsPath"], "/orch/c");
        // Without no_new_privs: permitted (only) keeps CAP_SYS_ADMIN for
        // the executor to install the filter with.
        let caps = &runtime["process"]["capabilities"];
        assert_eq!(caps["permitted"], json!(["CAP_CHOWN", "CAP_SYS_ADMIN"]));
        assert_eq!(caps["effective"], json!(["CAP_CHOWN"]));
        assert_eq!(caps["bounding"], json!(["CAP_CHOWN"]));
        let profile = serde_json::from_value(whole["linux"]["seccomp"].clone()).expect("profile");
        assert_eq!(
            program,
            seccomp_program::compile(&profile).expect("compiles")
        );
        assert_eq!(
            program_beside(&runtime_dir).expect("readable"),
            Some(program)
        );
        // An exec takes its process from the whole config, not the one
        // with the lent capability.
        assert_eq!(whole_config_dir(&runtime_dir), dir.path());
        assert_eq!(whole_config_dir(dir.path()), dir.path());
        assert_eq!(program_beside(dir.path()).expect("no program"), None);
        // A precompiled directory without its program is an error, never
        // an unfiltered process.
        std::fs::remove_file(runtime_dir.join(PROGRAM)).expect("remove");
        let error = program_beside(&runtime_dir)
            .expect_err("refused")
            .to_string();
        assert!(error.contains(PROGRAM), "{error}");
        assert!(!dir.path().join(format!("{PRECOMPILED}.new")).exists());
    }

    #[test]
    fn no_new_privs_needs_no_capability_and_no_profile_no_directory() {
        let dir = tempfile::tempdir().expect("dir");
        write(dir.path(), &config(true, true)).expect("written");
        let runtime: Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(PRECOMPILED).join("config.json")).expect("read"),
        )
        .expect("json");
        assert_eq!(
            runtime["process"]["capabilities"]["permitted"],
            json!(["CAP_CHOWN"])
        );
        // Rewritten without a profile (e.g. made privileged): the old
        // program goes with it.
        write(dir.path(), &config(true, false)).expect("rewritten");
        assert!(!dir.path().join(PRECOMPILED).exists());
        assert!(precompiled(dir.path()).expect("readable").is_none());
    }

    #[test]
    fn a_corrupt_program_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("dir");
        write(dir.path(), &config(true, true)).expect("written");
        let path = dir.path().join(PRECOMPILED).join(PROGRAM);
        std::fs::write(&path, b"12345").expect("corrupt it");
        let error = precompiled(dir.path()).expect_err("refused").to_string();
        assert!(error.contains("seccomp program"), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
    }
}
