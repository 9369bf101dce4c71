//! Checks and set-up of the host the loader runs on: privileges, bpffs, qdiscs.

use anyhow::{bail, Context as _};
use log::info;

const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Fail with a clear message unless we run as root.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bpfnat needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN): run it with sudo");
    }
    Ok(())
}

/// Whether bpffs is mounted at /sys/fs/bpf.
pub(crate) fn bpffs_mounted() -> bool {
    nix::sys::statfs::statfs(BPFFS).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Mount bpffs at /sys/fs/bpf if it is not there (pinned state lives there).
pub(crate) fn ensure_bpffs() -> anyhow::Result<()> {
    if bpffs_mounted() {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("bpffs is not mounted and mounting it at {BPFFS} failed"))?;
    info!("mounted bpffs at {BPFFS}");
    Ok(())
}
