//! Embeds the kernel programs (`cargo xtask build-ebpf` output) into
//! `orch-node`, so the agent is one self-contained binary; links
//! `orch-runtime` as a fixed-address executable.

use std::env;
use std::path::PathBuf;

fn main() {
    // orch-runtime is started for every container create and exec. As a
    // position-independent executable the loader first applies ~22,000
    // relocations and copies the ~100 pages they write: ~0.3 ms of a
    // ~1.2 ms start. The cost is no address randomisation of its own
    // code, which its clones run in a container's namespaces until the
    // exec (docs/architecture.md weighs it); delete this line for PIE.
    println!("cargo::rustc-link-arg-bin=orch-runtime=-no-pie");
    println!("cargo::rustc-check-cfg=cfg(orch_ebpf_object)");
    println!("cargo::rerun-if-env-changed=ORCH_EBPF_OBJECT");
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");
    let object = match env::var_os("ORCH_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let target_dir = env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
                    PathBuf::from(manifest_dir).join("..").join("target")
                });
            target_dir.join("bpfel-unknown-none/release/orch-ebpf")
        }
    };
    println!("cargo::rerun-if-changed={}", object.display());
    if object.is_file() {
        println!(
            "cargo::rustc-env=ORCH_EBPF_OBJECT_PATH={}",
            object.display()
        );
        println!("cargo::rustc-cfg=orch_ebpf_object");
    } else {
        println!(
            "cargo::warning=eBPF object {} not found: this orch-node cannot load its kernel \
             programs. Run `cargo xtask build-ebpf` first.",
            object.display()
        );
    }
}
