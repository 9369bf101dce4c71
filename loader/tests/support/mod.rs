pub mod cli;
pub mod e2e;
pub mod packet;
pub mod topo;

/// First line of every test marked `#[ignore = "needs root: ..."]`: such a test only runs when
/// asked for (`cargo xtask test` passes `--include-ignored`, and refuses to run as non-root),
/// and run by hand without root it fails with this message instead of passing empty.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, BPF programs): run `cargo xtask test` as root"
    );
}
