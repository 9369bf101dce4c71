//! Checks and set-up of the host the loader runs on: privileges, bpffs, qdiscs.

use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{bail, Context as _};
use log::info;

const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// How far up the process tree to look for the host's bpffs.
const MAX_ANCESTORS: usize = 32;

/// Fail with a clear message unless we run as root.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bpfnat needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN): run it with sudo");
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// The bpffs the pinned state lives in: the one at /sys/fs/bpf, or, when this process's mount
/// namespace hides it, the host's.
///
/// `ip netns exec NAME CMD` gives CMD a mount namespace of its own with a fresh /sys (the
/// network namespace's sysfs), where /sys/fs/bpf is an empty directory: `bpfnat status` run
/// that way would not see an instance that `bpfnat --netns NAME up` pinned, and an `up` run
/// that way would pin into a private bpffs that dies with it. The host's bpffs is still
/// reachable through a process in the host's mount namespace: the nearest ancestor that is in
/// another mount namespace with another /sys (the shell `ip netns exec` was started from) and
/// sees a bpffs at its /sys/fs/bpf. Its root is opened once (`O_PATH`) and kept, so the path
/// stays valid after that process exits. A mount namespace that merely lacks bpffs on the
/// same /sys (made on purpose) gets its own bpffs mounted instead ([`ensure_bpffs`]).
pub(crate) fn bpffs_root() -> Option<PathBuf> {
    static HOST: OnceLock<Option<OwnedFd>> = OnceLock::new();
    if is_bpffs(Path::new(BPFFS)) {
        return Some(PathBuf::from(BPFFS));
    }
    HOST.get_or_init(host_bpffs)
        .as_ref()
        .map(|fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())))
}

/// The host's bpffs, seen through an ancestor in another mount namespace, opened `O_PATH`.
fn host_bpffs() -> Option<OwnedFd> {
    use std::os::unix::fs::MetadataExt as _;
    let ns_of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let sys_of = |root: &str| {
        std::fs::metadata(format!("{root}/sys"))
            .ok()
            .map(|m| m.dev())
    };
    let own = ns_of("self")?;
    let own_sys = sys_of("")?;
    let mut pid = std::os::unix::process::parent_id();
    for _ in 0..MAX_ANCESTORS {
        if pid <= 1 {
            return None;
        }
        let bpffs = PathBuf::from(format!("/proc/{pid}/root{BPFFS}"));
        if ns_of(&pid.to_string()).is_some_and(|ns| ns != own)
            && sys_of(&format!("/proc/{pid}/root")).is_some_and(|dev| dev != own_sys)
            && is_bpffs(&bpffs)
        {
            return nix::fcntl::open(
                &bpffs,
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ok()
            // SAFETY: open just returned this descriptor, and nothing else owns it.
            .map(|fd| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
        }
        pid = parent_of(pid)?;
    }
    None
}

/// The parent of process `pid`, from its status file.
fn parent_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether a bpffs for the pinned state is there (see [`bpffs_root`]).
pub(crate) fn bpffs_mounted() -> bool {
    bpffs_root().is_some()
}

/// Mount bpffs at /sys/fs/bpf if no bpffs is there (nor, under `ip netns exec`, the host's).
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
