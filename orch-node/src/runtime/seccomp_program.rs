//! A seccomp profile compiled to its BPF program once, and loaded from
//! that program right before a container's process is executed.
//!
//! libcontainer compiles a container's `linux.seccomp` with libseccomp
//! inside every container's init: ~1.7 ms of CPU per container for
//! RuntimeDefault (libseccomp's rule insertion and code generation grow
//! with the square of the ~300 rules), on every start, restart and exec.
//! The agent compiles each distinct profile once with the same libseccomp
//! ([`compile`], the same translation libcontainer 0.7 makes), and
//! orch-runtime's executor installs the program itself ([`install`]).
//!
//! When that happens, libcontainer has already dropped the capabilities.
//! The kernel lets a process install a filter after that only under
//! no_new_privs or with CAP_SYS_ADMIN. A container without no_new_privs
//! (Kubernetes' default, `allowPrivilegeEscalation` unset) is therefore
//! given CAP_SYS_ADMIN in its permitted set only (see `bundle`); the
//! executor raises it, installs the filter, and takes it out of the
//! effective and permitted sets before the exec. Outside the bounding
//! set, it could not have survived the exec anyway.

use std::io::{Read as _, Seek as _};
use std::os::fd::AsFd as _;

use caps::{CapSet, Capability};
use libcontainer::oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator,
};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use nix::libc;
use thiserror::Error;

/// The kernel's limit on one filter's length (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;
/// `struct sock_filter`: code (u16), jt (u8), jf (u8), k (u32).
const INSTRUCTION_BYTES: usize = 8;

#[derive(Debug, Error)]
pub enum ProgramError {
    #[error("seccomp profile: {0}")]
    Profile(String),
    #[error("libseccomp: {0}")]
    Compile(String),
    #[error("seccomp program: {0}")]
    Corrupt(String),
    #[error("installing the seccomp filter: {0}")]
    Install(String),
}

/// A compiled filter: the instructions the kernel runs on every call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    instructions: Vec<libc::sock_filter>,
}

impl Program {
    /// The program as libseccomp exports it: the raw instructions.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.instructions.len() * INSTRUCTION_BYTES);
        for instruction in &self.instructions {
            bytes.extend_from_slice(&instruction.code.to_ne_bytes());
            bytes.push(instruction.jt);
            bytes.push(instruction.jf);
            bytes.extend_from_slice(&instruction.k.to_ne_bytes());
        }
        bytes
    }

    /// Reads raw instructions; refuses what the kernel would refuse.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProgramError> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(INSTRUCTION_BYTES) {
            return Err(ProgramError::Corrupt(format!(
                "{} bytes is not a whole number of instructions",
                bytes.len()
            )));
        }
        let count = bytes.len() / INSTRUCTION_BYTES;
        if count > MAX_INSTRUCTIONS {
            return Err(ProgramError::Corrupt(format!(
                "{count} instructions, over the kernel's {MAX_INSTRUCTIONS}"
            )));
        }
        let instructions = bytes
            .chunks_exact(INSTRUCTION_BYTES)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Ok(Self { instructions })
    }
}

/// Whether [`compile`] takes this profile: no notifications (they need
/// a listener libcontainer sets up), no filter flags, and architectures
/// of the machines orch runs on. Any other profile is left to
/// libcontainer.
pub fn compilable(profile: &LinuxSeccomp) -> bool {
    let notifies = |action: LinuxSeccompAction| action == LinuxSeccompAction::ScmpActNotify;
    !notifies(profile.default_action())
        && profile.flags().as_ref().is_none_or(|f| f.is_empty())
        && profile
            .architectures()
            .iter()
            .flatten()
            .all(|arch| architecture(*arch).is_ok())
        && profile.listener_path().is_none()
        && profile
            .syscalls()
            .iter()
            .flatten()
            .all(|rule| !notifies(rule.action()))
}

/// Compiles `profile` as libcontainer 0.7 would load it.
pub fn compile(profile: &LinuxSeccomp) -> Result<Program, ProgramError> {
    if !compilable(profile) {
        return Err(ProgramError::Profile(
            "notifications and filter flags are left to libcontainer".into(),
        ));
    }
    let failed = |what: &str, e: libseccomp::error::SeccompError| {
        ProgramError::Compile(format!("{what}: {e}"))
    };
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut filter = ScmpFilterContext::new(default).map_err(|e| failed("a new filter", e))?;
    // No_new_privs is the runtime's business (the spec's field), not the
    // filter's.
    filter
        .set_ctl_nnp(false)
        .map_err(|e| failed("leaving no_new_privs alone", e))?;
    for arch in profile.architectures().iter().flatten() {
        filter
            .add_arch(architecture(*arch)?)
            .map_err(|e| failed("an architecture", e))?;
    }
    for rule in profile.syscalls().iter().flatten() {
        let rule_action = action(rule.action(), rule.errno_ret())?;
        // A rule repeating the default adds nothing (libseccomp refuses it).
        if rule_action == default {
            continue;
        }
        let comparisons: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|arg| {
                ScmpArgCompare::new(
                    arg.index() as u32,
                    operator(arg.op(), arg.value_two()),
                    arg.value(),
                )
            })
            .collect();
        let mut indexes: Vec<usize> = rule.args().iter().flatten().map(|a| a.index()).collect();
        indexes.sort_unstable();
        let repeated_index = indexes.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names() {
            // A name this libseccomp does not know is a call this kernel
            // may lack: skipped, as libcontainer skips it.
            let Ok(call) = ScmpSyscall::from_name(name) else {
                tracing::debug!(%name, "seccomp: unknown system call skipped");
                continue;
            };
            let added = if comparisons.is_empty() {
                filter.add_rule(rule_action, call).map(|_| ())
            } else if repeated_index {
                // One comparison per argument and rule: each its own rule
                // (alternatives), as runc and libcontainer do.
                comparisons.iter().try_for_each(|c| {
                    filter
                        .add_rule_conditional(rule_action, call, std::slice::from_ref(c))
                        .map(|_| ())
                })
            } else {
                filter
                    .add_rule_conditional(rule_action, call, &comparisons)
                    .map(|_| ())
            };
            added.map_err(|e| failed(&format!("the rule for {name}"), e))?;
        }
    }
    let mut out = memfd()?;
    filter
        .export_bpf(out.as_fd())
        .map_err(|e| failed("exporting the program", e))?;
    let mut bytes = Vec::new();
    out.rewind()
        .and_then(|_| out.read_to_end(&mut bytes))
        .map_err(|e| ProgramError::Compile(format!("reading the exported program: {e}")))?;
    Program::from_bytes(&bytes)
}

fn memfd() -> Result<std::fs::File, ProgramError> {
    nix::sys::memfd::memfd_create(c"seccomp-program", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map(std::fs::File::from)
        .map_err(|e| ProgramError::Compile(format!("memfd: {e}")))
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, ProgramError> {
    let errno = errno.map_or(libc::EPERM, |e| e as i32);
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(
            u16::try_from(errno)
                .map_err(|_| ProgramError::Profile(format!("trace value {errno} out of range")))?,
        ),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(ProgramError::Profile(
                "notify is left to libcontainer".into(),
            ));
        }
    })
}

/// libcontainer 0.7 reads a masked comparison as `arg & valueTwo ==
/// value`; so does this (the profiles are written for it).
fn operator(op: LinuxSeccompOperator, value_two: Option<u64>) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value_two.unwrap_or(0)),
    }
}

fn architecture(arch: Arch) -> Result<ScmpArch, ProgramError> {
    Ok(match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchArm => ScmpArch::Arm,
        other => {
            return Err(ProgramError::Profile(format!(
                "architecture {other:?} is left to libcontainer"
            )));
        }
    })
}

fn install_failed(what: &str, e: &dyn std::fmt::Display) -> ProgramError {
    ProgramError::Install(format!("{what}: {e}"))
}

/// Whether [`install`] can work in the calling process as it is now
/// (after libcontainer dropped the capabilities, before the container's
/// start): under no_new_privs, or with CAP_SYS_ADMIN at least permitted.
/// Checked while the create can still fail with a reason, rather than
/// at the exec, where a failure only ends the container.
pub fn installable() -> Result<(), ProgramError> {
    if nix::sys::prctl::get_no_new_privs().map_err(|e| install_failed("no_new_privs", &e))? {
        return Ok(());
    }
    match caps::has_cap(None, CapSet::Permitted, Capability::CAP_SYS_ADMIN) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ProgramError::Install(
            "neither no_new_privs nor CAP_SYS_ADMIN in the permitted set: the filter could not be installed"
                .into(),
        )),
        Err(e) => Err(install_failed("capabilities", &e)),
    }
}

/// Installs `program` in the calling (single-threaded) process as
/// the last step before its exec: under no_new_privs directly, otherwise
/// with CAP_SYS_ADMIN raised from the permitted set for the one call.
/// Afterwards no capability outside the bounding set is left in the
/// effective or permitted sets. Everything is read before the filter is
/// loaded; after it, at most one capset, and none when nothing was lent.
pub fn install(program: &Program) -> Result<(), ProgramError> {
    let no_new_privs =
        nix::sys::prctl::get_no_new_privs().map_err(|e| install_failed("no_new_privs", &e))?;
    let read = |set: CapSet| caps::read(None, set).map_err(|e| install_failed("capabilities", &e));
    let (bounding, effective, permitted) = (
        read(CapSet::Bounding)?,
        read(CapSet::Effective)?,
        read(CapSet::Permitted)?,
    );
    let admin = Capability::CAP_SYS_ADMIN;
    let raise = !no_new_privs && !effective.contains(&admin);
    if raise {
        caps::raise(None, CapSet::Effective, admin)
            .map_err(|e| install_failed("CAP_SYS_ADMIN is not in the permitted set", &e))?;
    }
    let length = u16::try_from(program.instructions.len())
        .map_err(|_| ProgramError::Corrupt("too long".into()))?;
    let fprog = libc::sock_fprog {
        len: length,
        filter: program.instructions.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `program`'s instructions, alive for the
    // call; the kernel copies them.
    let loaded = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    let loaded = if loaded == 0 {
        Ok(())
    } else {
        Err(install_failed(
            "seccomp(SET_MODE_FILTER)",
            &std::io::Error::last_os_error(),
        ))
    };
    // What was effective before, and nothing outside the bounding set.
    let keep_effective: caps::CapsHashSet = effective.intersection(&bounding).copied().collect();
    let keep_permitted: caps::CapsHashSet = permitted.intersection(&bounding).copied().collect();
    if raise || keep_effective != effective {
        caps::set(None, CapSet::Effective, &keep_effective)
            .map_err(|e| install_failed("lowering the effective set", &e))?;
    }
    if keep_permitted != permitted {
        caps::set(None, CapSet::Permitted, &keep_permitted)
            .map_err(|e| install_failed("lowering the permitted set", &e))?;
    }
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_survives_its_bytes_and_corrupt_bytes_are_refused() {
        let profile: LinuxSeccomp =
            serde_json::from_value(crate::runtime::seccomp::default_profile(&[])).expect("profile");
        let program = compile(&profile).expect("compiles");
        let instructions = program.to_bytes().len() / INSTRUCTION_BYTES;
        assert!(instructions > 100, "{instructions} instructions");
        assert_eq!(
            Program::from_bytes(&program.to_bytes()).expect("reads"),
            program
        );
        assert!(Program::from_bytes(&[]).is_err());
        assert!(Program::from_bytes(&program.to_bytes()[..12]).is_err());
        assert!(Program::from_bytes(&vec![0; 8 * (MAX_INSTRUCTIONS + 1)]).is_err());
    }

    #[test]
    fn notifications_are_left_to_libcontainer() {
        let mut value = crate::runtime::seccomp::default_profile(&[]);
        value["syscalls"][0]["action"] = "SCMP_ACT_NOTIFY".into();
        let profile: LinuxSeccomp = serde_json::from_value(value).expect("profile");
        assert!(!compilable(&profile));
        assert!(compile(&profile).is_err());
    }
}
