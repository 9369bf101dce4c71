//! `--netns NAME`: join a namespace made by `ip netns add` (or `bpfnat lab`).
//!
//! Network namespace membership is per thread, and sockets belong to the
//! namespace of the thread that created them. `enter` therefore runs first
//! in `main`, while the process is still single-threaded: every worker thread
//! spawned later inherits it, and no socket is ever opened outside it.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

const NETNS_RUN_DIR: &str = "/run/netns";

/// Path of the namespace's bind mount, refusing names that leave the dir.
pub fn path(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        bail!("invalid network namespace name {name:?}");
    }
    Ok(Path::new(NETNS_RUN_DIR).join(name))
}

/// Moves the calling thread into the named network namespace.
pub fn enter(name: &str) -> Result<()> {
    let path = path(name)?;
    let file = File::open(&path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    // SAFETY: plain syscall on a descriptor we hold open for its duration.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns into network namespace {name}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rejects_escaping_names() {
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(super::path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            super::path("bnt-lg-a").unwrap().to_str(),
            Some("/run/netns/bnt-lg-a")
        );
    }
}
