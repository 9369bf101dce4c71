//! Rebuild the eBPF object when bpf-linker changes (e.g. after an upgrade).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
