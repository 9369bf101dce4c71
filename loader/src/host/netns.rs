//! Named network namespaces compatible with `ip netns` (bind mounts under
//! `/run/netns`), plus small rtnetlink/ethtool helpers that act on interfaces
//! inside a named namespace.
//!
//! Nothing here shells out: namespaces are made with `unshare`/`mount`, entered
//! with `setns`, links/addresses/routes are driven over rtnetlink, and offloads
//! through the `SIOCETHTOOL` ioctl.
//!
//! Namespace membership is per *thread* on Linux, so every operation that must
//! happen "inside" a namespace runs on a fresh thread that `setns`'d into it
//! ([`run_in`]); sockets opened there (netlink, ethtool, `/proc/sys` files)
//! stay bound to that namespace for their whole life.

use std::{
    ffi::c_char,
    fs::{self, File, OpenOptions},
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::{DirBuilderExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, MutexGuard,
    },
    thread,
};

use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use nix::{
    errno::Errno,
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
    sys::statfs::{statfs, NSFS_MAGIC},
};
use rtnetlink::Handle;

/// Where `ip netns` keeps its namespace bind mounts.
pub(crate) const NETNS_RUN_DIR: &str = "/run/netns";

/// Linux `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// Serialises create/delete within this process: `create` inspects the file
/// before replacing it, and a concurrent `create` of the same name that is
/// between "file created" and "netns mounted" would otherwise look stale.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

fn lock_netns_dir() -> MutexGuard<'static, ()> {
    // A panic while holding the lock leaves no broken invariant behind (the
    // filesystem is the state), so a poisoned lock is still usable.
    NETNS_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Path of the bind mount for namespace `name`, rejecting names that could
/// escape `/run/netns`.
pub fn netns_path(name: &str) -> Result<PathBuf> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 255
    {
        bail!("invalid network namespace name {name:?}");
    }
    Ok(Path::new(NETNS_RUN_DIR).join(name))
}

/// Checks that `name` is usable as a Linux interface name.
pub(crate) fn validate_ifname(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_IFNAME_LEN
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        bail!("invalid interface name {name:?} (1..={MAX_IFNAME_LEN} bytes, no '/', ':' or whitespace)");
    }
    Ok(())
}

/// True when `path` is a mounted namespace file (not merely a leftover empty
/// file, which is what a crash between "create file" and "bind mount" leaves).
pub(crate) fn is_live_netns_mount(path: &Path) -> bool {
    statfs(path).is_ok_and(|stat| stat.filesystem_type() == NSFS_MAGIC)
}

/// Whether the named namespace exists and is live (a stale leftover file
/// counts as absent, so [`create`] will repair it).
/// The name under `/run/netns` of the network namespace this process is in, as
/// `ip netns identify` finds it: `Some("lab-host")` under `ip netns exec lab-host` (or after
/// `--netns lab-host`), `None` in a namespace without a name (the host's, usually).
pub fn current_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let own = std::fs::metadata("/proc/self/ns/net").ok()?;
    std::fs::read_dir(NETNS_RUN_DIR)
        .ok()?
        .flatten()
        .find(|e| {
            std::fs::metadata(e.path()).is_ok_and(|m| m.dev() == own.dev() && m.ino() == own.ino())
        })
        .and_then(|e| e.file_name().into_string().ok())
}

pub fn exists(name: &str) -> bool {
    netns_path(name).is_ok_and(|path| is_live_netns_mount(&path))
}

/// Makes `/run/netns` exist as a shared mount, like `ip netns add` does, so
/// that unmounting a namespace file propagates to every mount namespace and
/// the namespace can be freed promptly.
fn prepare_run_dir() -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(NETNS_RUN_DIR)
        .with_context(|| format!("creating {NETNS_RUN_DIR}"))?;

    let mut made_mount_point = false;
    loop {
        match mount(
            None::<&str>,
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet. Upgrade it by bind-mounting the
            // directory onto itself, then retry making it shared (once).
            Err(Errno::EINVAL) if !made_mount_point => {
                mount(
                    Some(NETNS_RUN_DIR),
                    NETNS_RUN_DIR,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .with_context(|| format!("bind-mounting {NETNS_RUN_DIR} onto itself"))?;
                made_mount_point = true;
            }
            Err(err) => {
                return Err(err).with_context(|| format!("making {NETNS_RUN_DIR} a shared mount"))
            }
        }
    }
}

/// Removes whatever sits at `path` (a stale file, or a mount of it).
fn remove_netns_file(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (stale plain file); ENOENT: already gone.
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
        Err(err) => return Err(err).with_context(|| format!("unmounting {}", path.display())),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
    }
}

/// Creates the named network namespace (idempotent). An existing live
/// namespace is kept as is; a stale file left by a crash is replaced.
pub fn create(name: &str) -> Result<()> {
    let path = netns_path(name)?;
    let _guard = lock_netns_dir();
    prepare_run_dir()?;

    if is_live_netns_mount(&path) {
        return Ok(());
    }
    if path.symlink_metadata().is_ok() {
        log::warn!("netns {name}: replacing stale {}", path.display());
        remove_netns_file(&path)?;
    }

    // Mode 0 like iproute2: the file is only a mount point. (std insists on
    // write access for create_new; root ignores the mode anyway.)
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;

    // unshare() changes the calling thread's namespace for good, so do it on a
    // throwaway thread; the bind mount keeps the namespace alive after the
    // thread exits.
    let mount_target = path.clone();
    let mounted = thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            let own_netns = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
            mount(
                Some(own_netns.as_str()),
                &mount_target,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting {own_netns} onto {}", mount_target.display()))
        })
        .context("spawning netns creation thread")?
        .join()
        .map_err(|panic| anyhow!("netns creation thread panicked: {}", panic_message(&*panic)))
        .and_then(|result| result);

    if let Err(err) = mounted {
        // Leave no stale file behind for the next attempt to trip over.
        let _ = remove_netns_file(&path);
        return Err(err.context(format!("creating network namespace {name}")));
    }
    Ok(())
}

/// Deletes the named namespace (no error if it does not exist). The kernel
/// destroys its interfaces once nothing else holds a reference to it.
pub fn delete(name: &str) -> Result<()> {
    let path = netns_path(name)?;
    let _guard = lock_netns_dir();
    remove_netns_file(&path).with_context(|| format!("deleting network namespace {name}"))
}

fn open_netns(name: &str) -> Result<File> {
    let path = netns_path(name)?;
    if !is_live_netns_mount(&path) {
        bail!(
            "network namespace {name} does not exist ({} is not a namespace mount)",
            path.display()
        );
    }
    File::open(&path).with_context(|| format!("opening {}", path.display()))
}

/// Moves the *calling thread* into the named namespace. Threads it spawns
/// afterwards (e.g. a tokio runtime's workers) inherit it; other threads of
/// the process are unaffected. Meant for CLI start-up, before any runtime.
pub fn enter(name: &str) -> Result<()> {
    let ns_file = open_netns(name)?;
    setns(&ns_file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns into network namespace {name}"))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Runs `f` on a new thread that has entered the named namespace, and returns
/// its result. A panic in `f` is reported as an error.
///
/// Sockets and `/proc/sys/net` files opened in `f` belong to the namespace.
/// `/proc/net/...` does not: it is `/proc/self/net`, the main thread's view;
/// read `/proc/thread-self/net/...` instead.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    run_in_file(open_netns(name)?, name, f)
}

/// [`run_in`] for a namespace already opened (`ns_file`, e.g. one of Docker's, which are not
/// under `/run/netns`); `label` names it in errors and in the thread's name.
pub(crate) fn run_in_file<T: Send + 'static>(
    ns_file: File,
    label: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns_name = label.to_owned();
    thread::Builder::new()
        // The kernel keeps 15 bytes of a thread name; enough to spot it in `ps`.
        .name(format!("ns:{label}"))
        .spawn(move || -> Result<T> {
            setns(&ns_file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into network namespace {ns_name}"))?;
            drop(ns_file);
            f()
        })
        .with_context(|| format!("spawning thread for network namespace {label}"))?
        .join()
        .map_err(|panic| {
            anyhow!(
                "thread in network namespace {label} panicked: {}",
                panic_message(&*panic)
            )
        })?
}

/// Turns `net/ipv4/ip_forward` (or the dotted `net.ipv4.ip_forward`) into a
/// path under `/proc/sys`, refusing anything that could leave it.
fn sysctl_path(key: &str) -> Result<PathBuf> {
    // Dotted form only when there is no slash: interface names in
    // `net/ipv4/conf/eth0.100/...` legitimately contain dots.
    let relative = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    let relative = relative.trim_start_matches('/');
    if relative.is_empty()
        || relative
            .split('/')
            .any(|part| part.is_empty() || part == "..")
    {
        bail!("invalid sysctl key {key:?}");
    }
    Ok(Path::new("/proc/sys").join(relative))
}

/// Writes a sysctl (e.g. `net/ipv4/ip_forward` = `1`) inside the named
/// namespace: `/proc/sys/net` shows the namespace of the thread that opens it.
pub fn sysctl(name: &str, key: &str, value: &str) -> Result<()> {
    let path = sysctl_path(key)?;
    let value = value.to_owned();
    run_in(name, move || {
        fs::write(&path, value.as_bytes())
            .with_context(|| format!("writing {value:?} to {}", path.display()))
    })
    .with_context(|| format!("setting sysctl {key} in network namespace {name}"))
}

/// Reads a sysctl inside the named namespace (trailing newline removed).
pub fn read_sysctl(name: &str, key: &str) -> Result<String> {
    let path = sysctl_path(key)?;
    run_in(name, move || {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(text.trim_end().to_owned())
    })
    .with_context(|| format!("reading sysctl {key} in network namespace {name}"))
}

/// `struct ethtool_value` from `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Issues one `ETHTOOL_{G,S}*` command carrying a `struct ethtool_value` on
/// the current thread's namespace, returning the `data` the kernel left.
/// A socket to hang interface ioctls on, in the current thread's namespace.
fn inet_dgram_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw_fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw_fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw_fd is a freshly opened descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw_fd) })
}

/// A zeroed `ifreq` naming `ifname` (validated by callers to fit with its NUL).
fn ifreq_for(ifname: &str) -> libc::ifreq {
    // SAFETY: ifreq is a plain C struct/union for which all-zero is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request
        .ifr_name
        .iter_mut()
        .take(MAX_IFNAME_LEN)
        .zip(ifname.as_bytes())
    {
        *slot = *byte as c_char;
    }
    request
}

fn ethtool_value_ioctl(ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let socket = inet_dgram_socket()?;
    let mut value = EthtoolValue { cmd, data };
    let mut request = ifreq_for(ifname);
    request.ifr_ifru.ifru_data = std::ptr::addr_of_mut!(value).cast::<c_char>();
    // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it points to,
    // both of which live until the call returns.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

/// The MAC address of `ifname` in the current thread's namespace
/// (`SIOCGIFHWADDR`; rtnetlink 0.14 would need netlink-packet-route's types
/// to pick it out of a link dump).
fn current_mac(ifname: &str) -> io::Result<[u8; 6]> {
    let socket = inet_dgram_socket()?;
    let mut request = ifreq_for(ifname);
    // SAFETY: SIOCGIFHWADDR fills the ifreq, which lives across the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful SIOCGIFHWADDR leaves ifru_hwaddr initialised.
    let hwaddr = unsafe { request.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (byte, raw) in mac.iter_mut().zip(hwaddr.sa_data) {
        *byte = raw as u8;
    }
    Ok(mac)
}

/// Reads whether TX checksum offload is on (`ethtool -k IF`, "tx-checksumming").
pub fn tx_checksum(netns: &str, ifname: &str) -> Result<bool> {
    validate_ifname(ifname)?;
    let ifname_owned = ifname.to_owned();
    run_in(netns, move || {
        Ok(ethtool_value_ioctl(&ifname_owned, ETHTOOL_GTXCSUM, 0)? != 0)
    })
    .with_context(|| format!("reading tx checksum offload of {ifname} in netns {netns}"))
}

/// Turns TX checksum offload on or off, like `ethtool -K IF tx on|off`, and
/// verifies the driver took it. (Packets from an interface with offload on
/// can carry partial checksums that an XDP/TC program must not trust.)
pub fn set_tx_checksum(netns: &str, ifname: &str, on: bool) -> Result<()> {
    validate_ifname(ifname)?;
    let ifname_owned = ifname.to_owned();
    run_in(netns, move || {
        ethtool_value_ioctl(&ifname_owned, ETHTOOL_STXCSUM, u32::from(on))
            .context("ETHTOOL_STXCSUM")?;
        let now_on =
            ethtool_value_ioctl(&ifname_owned, ETHTOOL_GTXCSUM, 0).context("ETHTOOL_GTXCSUM")? != 0;
        if now_on != on {
            bail!(
                "driver kept tx checksum offload {}",
                if now_on { "on" } else { "off" }
            );
        }
        Ok(())
    })
    .with_context(|| {
        format!(
            "setting tx checksum offload {} on {ifname} in netns {netns}",
            if on { "on" } else { "off" }
        )
    })
}

/// Runs rtnetlink operations inside the named namespace: a current-thread
/// tokio runtime and a netlink socket are created on the namespaced thread,
/// so `handle` talks to that namespace's kernel tables.
pub fn with_netlink<T, F, Fut>(name: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    run_in(name, move || block_on_netlink(f))
        .with_context(|| format!("in network namespace {name}"))
}

/// Runs rtnetlink operations in the calling thread's namespace, blocking: a current-thread
/// tokio runtime and a netlink socket made for them.
pub(crate) fn block_on_netlink<T, F, Fut>(f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building tokio runtime for netlink")?;
    runtime.block_on(async move {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("opening rtnetlink socket")?;
        tokio::spawn(connection);
        f(handle).await
    })
}

/// The kernel errno carried by a netlink error reply, if any.
pub(crate) fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
        _ => None,
    }
}

/// Converts an rtnetlink error into one that prints the errno text
/// ("File exists (os error 17)") rather than the raw netlink message.
fn netlink_error(err: rtnetlink::Error) -> anyhow::Error {
    match &err {
        rtnetlink::Error::NetlinkError(message) => anyhow::Error::new(message.to_io()),
        _ => anyhow::Error::new(err),
    }
}

/// Index of interface `name` in the handle's namespace, `None` if absent.
pub(crate) async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>> {
    validate_ifname(name)?;
    let found = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_collect::<Vec<_>>()
        .await;
    match found {
        Ok(links) => Ok(links.first().map(|link| link.header.index)),
        Err(err) if netlink_errno(&err) == Some(libc::ENODEV) => Ok(None),
        Err(err) => Err(netlink_error(err)).with_context(|| format!("looking up interface {name}")),
    }
}

/// Like [`link_index`] but an absent interface is an error.
pub(crate) async fn require_link_index(handle: &Handle, name: &str) -> Result<u32> {
    link_index(handle, name)
        .await?
        .ok_or_else(|| anyhow!("no interface named {name}"))
}

/// `ip link set NAME up`
pub async fn set_link_up(handle: &Handle, name: &str) -> Result<()> {
    let index = require_link_index(handle, name).await?;
    handle
        .link()
        .set(index)
        .up()
        .execute()
        .await
        .map_err(netlink_error)
        .with_context(|| format!("setting {name} up"))
}

/// `ip link set NAME address MAC`, skipped when it already has that MAC
/// (a change notification would flush the neighbour entries learnt on it).
/// On a bridge this also pins the MAC: otherwise the bridge takes the lowest
/// MAC among its ports and changes it as ports come and go, leaving stale
/// gateway entries in the neighbours' ARP caches.
pub async fn set_link_mac(handle: &Handle, name: &str, mac: [u8; 6]) -> Result<()> {
    let index = require_link_index(handle, name).await?;
    if current_mac(name).with_context(|| format!("reading the MAC address of {name}"))? == mac {
        return Ok(());
    }
    handle
        .link()
        .set(index)
        .address(mac.to_vec())
        .execute()
        .await
        .map_err(netlink_error)
        .with_context(|| format!("setting the MAC address of {name}"))
}

/// `ip link set NAME name NEW_NAME` (the link must be down).
pub(crate) async fn rename_link(handle: &Handle, name: &str, new_name: &str) -> Result<()> {
    validate_ifname(new_name)?;
    let index = require_link_index(handle, name).await?;
    handle
        .link()
        .set(index)
        .name(new_name.to_owned())
        .execute()
        .await
        .map_err(netlink_error)
        .with_context(|| format!("renaming {name} to {new_name}"))
}

/// `ip link del NAME`; absent is fine. Deleting one end of a veth pair
/// deletes both ends, wherever the peer is.
pub(crate) async fn delete_link(handle: &Handle, name: &str) -> Result<()> {
    let Some(index) = link_index(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        // Raced with the kernel tearing it down (e.g. its veth peer's
        // namespace just died).
        Err(err) if netlink_errno(&err) == Some(libc::ENODEV) => Ok(()),
        Err(err) => Err(netlink_error(err)).with_context(|| format!("deleting interface {name}")),
    }
}

/// `ip link add NAME type bridge` unless a link of that name already exists.
/// An existing link is kept as is (enslaving to it fails clearly if it is not
/// a bridge).
pub async fn ensure_bridge(handle: &Handle, name: &str) -> Result<()> {
    if link_index(handle, name).await?.is_some() {
        return Ok(());
    }
    match handle.link().add().bridge(name.to_owned()).execute().await {
        Ok(()) => Ok(()),
        Err(err) if netlink_errno(&err) == Some(libc::EEXIST) => Ok(()),
        Err(err) => Err(netlink_error(err)).with_context(|| format!("creating bridge {name}")),
    }
}

/// `ip link set PORT master BRIDGE` (no-op if already enslaved to it).
pub async fn set_bridge_port(handle: &Handle, port: &str, bridge: &str) -> Result<()> {
    let bridge_index = require_link_index(handle, bridge).await?;
    let port_index = require_link_index(handle, port).await?;
    handle
        .link()
        .set(port_index)
        .controller(bridge_index)
        .execute()
        .await
        .map_err(netlink_error)
        .with_context(|| format!("enslaving {port} to bridge {bridge}"))
}

/// `ip addr add ADDR/PREFIX dev IFNAME`; already present is fine.
pub async fn add_address(
    handle: &Handle,
    ifname: &str,
    addr: IpAddr,
    prefix_len: u8,
) -> Result<()> {
    let index = require_link_index(handle, ifname).await?;
    match handle
        .address()
        .add(index, addr, prefix_len)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(err) if netlink_errno(&err) == Some(libc::EEXIST) => Ok(()),
        Err(err) => Err(netlink_error(err))
            .with_context(|| format!("adding {addr}/{prefix_len} to {ifname}")),
    }
}

/// `ip -6 addr add ADDR/PREFIX dev IFNAME nodad`: usable at once, with no duplicate address
/// detection (the lab's addresses are its own); already present is fine.
pub async fn add_address6_nodad(
    handle: &Handle,
    ifname: &str,
    addr: std::net::Ipv6Addr,
    prefix_len: u8,
) -> Result<()> {
    let index = require_link_index(handle, ifname).await?;
    let mut req = handle.address().add(index, IpAddr::V6(addr), prefix_len);
    req.message_mut()
        .header
        .flags
        .push(netlink_packet_route::address::AddressHeaderFlag::Nodad);
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(err) if netlink_errno(&err) == Some(libc::EEXIST) => Ok(()),
        Err(err) => Err(netlink_error(err))
            .with_context(|| format!("adding {addr}/{prefix_len} to {ifname}")),
    }
}

/// `ip -6 route replace default via GATEWAY`
pub async fn replace_default_route_v6(handle: &Handle, gateway: std::net::Ipv6Addr) -> Result<()> {
    handle
        .route()
        .add()
        .v6()
        .destination_prefix(std::net::Ipv6Addr::UNSPECIFIED, 0)
        .gateway(gateway)
        .replace()
        .execute()
        .await
        .map_err(netlink_error)
        .with_context(|| format!("replacing the IPv6 default route via {gateway}"))
}

/// `ip addr del ADDR/PREFIX dev IFNAME`; absent is fine.
pub async fn delete_address(
    handle: &Handle,
    ifname: &str,
    addr: IpAddr,
    prefix_len: u8,
) -> Result<()> {
    let index = require_link_index(handle, ifname).await?;
    let matching = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(addr)
        .set_prefix_length_filter(prefix_len)
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(netlink_error)
        .with_context(|| format!("listing addresses of {ifname}"))?;
    for message in matching {
        match handle.address().del(message).execute().await {
            Ok(()) => {}
            Err(err) if netlink_errno(&err) == Some(libc::EADDRNOTAVAIL) => {}
            Err(err) => {
                return Err(netlink_error(err))
                    .with_context(|| format!("deleting {addr}/{prefix_len} from {ifname}"))
            }
        }
    }
    Ok(())
}

/// `ip route replace DEST/PREFIX via GATEWAY` in the main table: creates the
/// route or overwrites a different one for the same destination, so it is
/// idempotent and also repairs a wrong gateway.
pub async fn replace_route_v4(
    handle: &Handle,
    destination: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
) -> Result<()> {
    handle
        .route()
        .add()
        .v4()
        .destination_prefix(destination, prefix_len)
        .gateway(gateway)
        .replace()
        .execute()
        .await
        .map_err(netlink_error)
        .with_context(|| format!("replacing route {destination}/{prefix_len} via {gateway}"))
}

/// `ip route replace default via GATEWAY`
pub async fn replace_default_route_v4(handle: &Handle, gateway: Ipv4Addr) -> Result<()> {
    replace_route_v4(handle, Ipv4Addr::UNSPECIFIED, 0, gateway).await
}

/// Whether interface `ifname` exists in the named namespace.
pub(crate) fn link_exists(netns: &str, ifname: &str) -> Result<bool> {
    let ifname = ifname.to_owned();
    with_netlink(netns, move |handle| async move {
        Ok(link_index(&handle, &ifname).await?.is_some())
    })
}

/// Deletes interface `ifname` in the named namespace; absent is fine.
pub fn delete_link_in(netns: &str, ifname: &str) -> Result<()> {
    let ifname = ifname.to_owned();
    with_netlink(netns, move |handle| async move {
        delete_link(&handle, &ifname).await
    })
}

/// A name for a veth end that only lives for a moment in the "wrong"
/// namespace; unique per process and call so parallel callers never clash.
fn temporary_ifname() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let serial = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
    // "bnt" + up to 6 hex digits of pid (pid_max <= 2^22) + up to 6 of serial.
    format!("bnt{:x}{serial:x}", std::process::id() & 0x3f_ffff)
}

/// Creates a veth pair with end `name_a` in namespace `ns_a` and end `name_b`
/// in namespace `ns_b`; both ends are left up. Both names must be free.
///
/// Both ends are created in `ns_a` (the peer under a temporary name, so it
/// cannot clash with anything there), the peer is moved into `ns_b` and only
/// then renamed; on failure the half-built pair is deleted.
pub fn create_veth_pair(ns_a: &str, name_a: &str, ns_b: &str, name_b: &str) -> Result<()> {
    validate_ifname(name_a)?;
    validate_ifname(name_b)?;
    let context = || format!("creating veth pair {ns_a}/{name_a} <-> {ns_b}/{name_b}");

    if ns_a == ns_b {
        let (name_a, name_b) = (name_a.to_owned(), name_b.to_owned());
        return with_netlink(ns_a, move |handle| async move {
            handle
                .link()
                .add()
                .veth(name_a.clone(), name_b.clone())
                .execute()
                .await
                .map_err(netlink_error)?;
            set_link_up(&handle, &name_a).await?;
            set_link_up(&handle, &name_b).await
        })
        .with_context(context);
    }

    if link_exists(ns_b, name_b).with_context(context)? {
        return Err(anyhow!("interface {name_b} already exists in netns {ns_b}"))
            .with_context(context);
    }
    let ns_b_path = netns_path(ns_b)?;
    let temporary = temporary_ifname();

    let (a_end, peer) = (name_a.to_owned(), temporary.clone());
    with_netlink(ns_a, move |handle| async move {
        if link_index(&handle, &a_end).await?.is_some() {
            bail!("interface {a_end} already exists");
        }
        handle
            .link()
            .add()
            .veth(a_end.clone(), peer.clone())
            .execute()
            .await
            .map_err(netlink_error)
            .with_context(|| format!("adding veth {a_end} with peer {peer}"))?;
        let moved = async {
            let ns_b_file = File::open(&ns_b_path)
                .with_context(|| format!("opening {}", ns_b_path.display()))?;
            let peer_index = require_link_index(&handle, &peer).await?;
            handle
                .link()
                .set(peer_index)
                .setns_by_fd(ns_b_file.as_raw_fd())
                .execute()
                .await
                .map_err(netlink_error)
                .with_context(|| format!("moving {peer} to {}", ns_b_path.display()))?;
            set_link_up(&handle, &a_end).await
        }
        .await;
        if moved.is_err() {
            let _ = delete_link(&handle, &a_end).await;
        }
        moved
    })
    .with_context(context)?;

    let (b_end, moved_peer) = (name_b.to_owned(), temporary);
    let renamed = with_netlink(ns_b, move |handle| async move {
        // Moving a link between namespaces brings it down, which is also
        // what renaming requires.
        rename_link(&handle, &moved_peer, &b_end).await?;
        set_link_up(&handle, &b_end).await
    });
    if let Err(err) = renamed {
        let _ = delete_link_in(ns_a, name_a);
        return Err(err).with_context(context);
    }
    Ok(())
}
