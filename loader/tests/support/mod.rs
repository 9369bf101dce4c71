pub mod cli;
pub mod docker;
pub mod e2e;
pub mod packet;
pub mod topo;

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Shared by the tests that may run side by side, taken alone by the heavy ones.
static LOAD: RwLock<()> = RwLock::new(());

/// First line of every test marked `#[ignore = "needs root: ..."]`, kept until the test ends
/// (`let _slot = require_root();`). Such a test only runs when asked for (`cargo xtask test`
/// passes `--include-ignored`, and refuses to run as non-root); run by hand without root it
/// fails with this message instead of passing empty. The guard lets it run beside other tests
/// but never beside one that holds [`require_root_alone`]'s.
pub fn require_root() -> RwLockReadGuard<'static, ()> {
    assert_root();
    LOAD.read().unwrap_or_else(PoisonError::into_inner)
}

/// [`require_root`] for a test that moves data for seconds on a 2-core machine (scale,
/// restart): it runs alone. A failed test does not block the others (poisoning is ignored).
#[allow(
    dead_code,
    reason = "the e2e binary uses it; the datapath binary has no heavy test"
)]
pub fn require_root_alone() -> RwLockWriteGuard<'static, ()> {
    assert_root();
    LOAD.write().unwrap_or_else(PoisonError::into_inner)
}

fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, BPF programs): run `cargo xtask test` as root"
    );
}
