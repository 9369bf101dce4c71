//! Pinned state of one `bpfnat up` instance: `/sys/fs/bpf/bpfnat/<instance>/`.
//!
//! The daemon pins its maps there (`NAT_OUT`, `NAT_IN`, `CONFIG`, `INTERNAL_NETS`,
//! `COUNTERS`, `FRAGS`, `PUBLISH`, `BRIDGES`, `PORTS`, `ENDPOINTS`, `HAIRPIN`, the IPv6 ones,
//! ...: `datapath::PINNED_MAPS`) so that `bpfnat conntrack`, `stats`, `status` and `publish`
//! can open them from another process, and removes the directory when it exits normally.
//!
//! # Who holds an instance
//!
//! bpffs holds only BPF objects and directories: no regular file, so no `flock`. The owner is
//! recorded in one more pinned map, `OWNER`: a one-entry array holding the daemon's PID, the
//! start time of that process (field 22 of `/proc/PID/stat`, clock ticks since boot) and the
//! inode of its PID namespace. The instance is held while a process with that PID *and* that
//! start time exists: the start time makes a recycled PID harmless (a new process with the
//! same PID has another start time), and nothing depends on a command line someone could
//! imitate or on a process name. Seen from another PID namespace the PID means nothing, so
//! there the kernel decides instead: the instance is held while a loaded BPF program uses the
//! pinned `NAT_OUT` map (the daemon's TCX links keep its programs loaded, and they go away
//! with the process).
//!
//! Claiming is atomic: `mkdir` of the instance directory succeeds for exactly one process.
//!
//! # Restart and upgrade
//!
//! With TCX the daemon pins its links too (`links/<ifname>-<hook>`), so the datapath keeps
//! translating after the daemon is gone: killed, crashed, or stopped with `up --keep`. A
//! directory without a live owner is stale; the next `up` *adopts* it: it checks that every
//! pinned map has the shape the (possibly newer) object expects, loads the object reusing the
//! pinned maps ([`crate::bpf::datapath::Datapath::load_pinned`]), puts the new programs behind
//! the pinned links atomically (`bpf_link_update`) and records itself as owner. Taking over
//! is serialised by `mkdir` of a `CLAIM` directory inside the instance directory. With
//! `--tc-mode clsact` (nothing can be pinned) a stale directory is removed with a warning
//! instead. `bpfnat down` removes a stale instance (links and maps).
//!
//! Seen from another PID namespace, pinned links keep the programs (and so `NAT_OUT`) in
//! use after the daemon is gone, so there an instance left running by a dead daemon counts
//! as held.

use std::{
    io::ErrorKind,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};
use aya::maps::{Array, Map, MapData};
use bpfnat_common::{names, HairpinEntry, PublishKey, PublishTarget};
use log::{info, warn};

/// Where every instance directory lives: `bpfnat/` in the bpffs (`/sys/fs/bpf/bpfnat`; the
/// host's, also from a mount namespace `ip netns exec` made: see
/// [`crate::host::system::bpffs_root`]).
pub(crate) fn pin_root() -> PathBuf {
    crate::host::system::bpffs_root()
        .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf"))
        .join("bpfnat")
}
/// The owner record inside an instance directory.
pub(crate) const OWNER_PIN: &str = "OWNER";
/// Instance used without `--instance` and without `--netns`.
pub(crate) const DEFAULT_INSTANCE: &str = "default";

/// The instance name: `--instance`, else the name of the network namespace (`--netns`, or
/// the named namespace the command runs in), else `default`.
pub fn resolve_name(instance: Option<&str>, netns: Option<&str>) -> anyhow::Result<String> {
    let name = instance.or(netns).unwrap_or(DEFAULT_INSTANCE);
    validate_name(name).map_err(|e| {
        if instance.is_none() && netns.is_some() {
            e.context("the instance name defaults to the network namespace's name; give one with --instance")
        } else {
            e
        }
    })?;
    Ok(name.to_owned())
}

/// An instance name is one directory name under [`pin_root`]: 1-64 characters, no `/`, no
/// dot (bpffs refuses names with one), no whitespace or control characters.
pub(crate) fn validate_name(name: &str) -> anyhow::Result<()> {
    let bad = |why: &str| anyhow!("bad instance name {name:?}: {why}");
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 64 {
        return Err(bad("longer than 64 characters"));
    }
    if name.contains('/') {
        return Err(bad("it contains '/'"));
    }
    if name.contains('.') {
        return Err(bad("it contains '.', which bpffs refuses in a name"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace or control characters"));
    }
    Ok(())
}

/// The directory of an instance's pins.
pub fn dir(name: &str) -> PathBuf {
    pin_root().join(name)
}

/// Who holds an instance; the value of the pinned `OWNER` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Owner {
    pub pid: u32,
    /// Layout version of this record.
    pub version: u32,
    /// Start time of the process, clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
    /// Inode of the process's PID namespace (`/proc/self/ns/pid`).
    pub pid_ns: u64,
}

// SAFETY: derives bytemuck::Pod, which proves repr(C) without padding and only Pod fields.
unsafe impl aya::Pod for Owner {}

const OWNER_VERSION: u32 = 1;

impl Owner {
    /// The record for this process.
    pub(crate) fn current() -> anyhow::Result<Self> {
        let pid = std::process::id();
        Ok(Self {
            pid,
            version: OWNER_VERSION,
            start_time: start_time(pid)?
                .ok_or_else(|| anyhow!("cannot read our own start time in /proc/self/stat"))?,
            pid_ns: own_pid_ns()?,
        })
    }

    /// The owner recorded in `dir`, or None if there is no record (yet).
    pub(crate) fn read(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(OWNER_PIN);
        let data = match MapData::from_pin(&path) {
            Ok(data) => data,
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let map = Map::from_map_data(data)?;
        let array: Array<&MapData, Owner> = Array::try_from(&map)
            .with_context(|| format!("{} is not an owner record", path.display()))?;
        Ok(Some(array.get(&0, 0)?))
    }

    /// Pin this record as `dir/OWNER`.
    fn pin(&self, dir: &Path) -> anyhow::Result<()> {
        let mut array =
            Array::<MapData, Owner>::create(1, 0).context("creating the owner record")?;
        array.set(0, *self, 0)?;
        let path = dir.join(OWNER_PIN);
        array
            .pin(&path)
            .with_context(|| format!("pinning {}", path.display()))
    }

    /// Record this owner in `dir`: overwrite the pinned record, or pin one if there is none.
    fn record(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(OWNER_PIN);
        let data = match MapData::from_pin(&path) {
            Ok(data) => data,
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == ErrorKind::NotFound =>
            {
                return self.pin(dir)
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let mut map = Map::from_map_data(data)?;
        let mut array: Array<&mut MapData, Owner> = Array::try_from(&mut map)
            .with_context(|| format!("{} is not an owner record", path.display()))?;
        array
            .set(0, *self, 0)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Whether the recorded process still runs (see the module documentation).
    fn alive(&self, dir: &Path) -> bool {
        match own_pid_ns() {
            Ok(ns) if ns == self.pid_ns => {
                start_time(self.pid).ok().flatten() == Some(self.start_time)
            }
            _ => maps_in_use(dir).unwrap_or(true),
        }
    }
}

/// Start time of process `pid` in clock ticks after boot, None if there is no such process
/// or it has exited (a zombie has closed its descriptors: its links and maps are gone).
fn start_time(pid: u32) -> anyhow::Result<Option<u64>> {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading /proc/{pid}/stat")),
    };
    // "PID (COMM) STATE PPID ...": COMM may contain spaces and parentheses, so split after the
    // last ')'. Field 22 (starttime) is then the 20th field.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&("Z" | "X" | "x"))) {
        return Ok(None);
    }
    let field = fields
        .get(19)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    Ok(Some(field.parse().context("parsing starttime")?))
}

fn own_pid_ns() -> anyhow::Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/pid")
        .context("reading /proc/self/ns/pid")?
        .ino())
}

/// Whether a loaded BPF program uses the pinned `NAT_OUT` map of `dir`.
fn maps_in_use(dir: &Path) -> anyhow::Result<bool> {
    let path = dir.join(names::MAP_NAT_OUT);
    let id = match aya::maps::MapInfo::from_pin(&path) {
        Ok(info) => info.id(),
        Err(_) if !path.exists() => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    for prog in aya::programs::loaded_programs() {
        let prog = prog?;
        if prog.map_ids()?.unwrap_or_default().contains(&id) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What is found at an instance's directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// No directory: nothing runs under this name.
    Absent,
    /// Held by a live daemon.
    Running(Owner),
    /// Left behind by a daemon that is gone (None: it died before recording itself).
    Stale(Option<Owner>),
}

/// The status of the instance whose pins are in `dir`. A directory without an owner record
/// may belong to a daemon that is claiming it right now, so the record is waited for (1 s).
pub fn status_of(dir: &Path) -> anyhow::Result<Status> {
    if !dir.exists() {
        return Ok(Status::Absent);
    }
    let mut owner = None;
    for attempt in 0..10 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        owner = Owner::read(dir)?;
        if owner.is_some() || !dir.exists() {
            break;
        }
    }
    if !dir.exists() {
        return Ok(Status::Absent);
    }
    Ok(match owner {
        Some(o) if o.alive(dir) => Status::Running(o),
        other => Status::Stale(other),
    })
}

/// Fail with one line unless instance `name` is running; return its directory.
pub fn require_running(name: &str) -> anyhow::Result<PathBuf> {
    let dir = dir(name);
    if !crate::host::system::bpffs_mounted() {
        bail!("instance {name:?} is not running (no bpffs at /sys/fs/bpf, nor the host's)");
    }
    match status_of(&dir)? {
        Status::Running(_) => Ok(dir),
        Status::Absent => bail!(
            "instance {name:?} is not running (no pinned state in {}); start it with `bpfnat up`, \
             or name it with --instance / --netns",
            dir.display()
        ),
        Status::Stale(owner) => bail!(
            "instance {name:?} is not running (stale pinned state in {}{}; the next `bpfnat up` \
             adopts it, `bpfnat down` removes it)",
            dir.display(),
            owner.map_or(String::new(), |o| format!(" left by pid {}", o.pid))
        ),
    }
}

/// The claim of an instance by this process. Dropping it removes the pinned state (when this
/// process still owns it).
pub(crate) struct InstanceLock {
    name: String,
    dir: PathBuf,
    owner: Owner,
    released: bool,
    /// Taken over from a daemon that is gone: its pins are left in place if this claim is
    /// dropped without [`InstanceLock::release`] (a failed start must not destroy them).
    adopted: bool,
}

/// The directory a process creates inside a stale instance directory while taking it over
/// (bpffs refuses names with a dot).
const CLAIM_DIR: &str = "CLAIM";

impl InstanceLock {
    /// Claim instance `name`: create its directory and record this process as owner. A live
    /// owner makes this fail with one line. A stale directory is removed with a warning, or
    /// with `adopt` taken over, its pins kept (see the module documentation);
    /// [`InstanceLock::adopted`] tells.
    pub(crate) fn acquire_or_adopt(name: &str, adopt: bool) -> anyhow::Result<Self> {
        validate_name(name)?;
        let dir = dir(name);
        let owner = Owner::current()?;
        // Bounded: each round either claims, fails, or removes a stale directory / sees the
        // parent vanish under a concurrent exit.
        for _ in 0..5 {
            let root = pin_root();
            std::fs::create_dir_all(&root)
                .with_context(|| format!("creating {}", root.display()))?;
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    let lock = Self {
                        name: name.to_owned(),
                        dir,
                        owner,
                        released: false,
                        adopted: false,
                    };
                    // On failure the lock is dropped, which removes the directory.
                    owner.pin(&lock.dir)?;
                    return Ok(lock);
                }
                // The root was removed by an instance that exited just now: try again.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => match status_of(&dir)? {
                    Status::Absent => continue,
                    Status::Running(o) => bail!(
                        "instance {name:?} is already running (bpfnat pid {}, pinned state in {}); \
                         stop it first or choose another --instance",
                        o.pid,
                        dir.display()
                    ),
                    Status::Stale(o) if adopt => return Self::adopt(name, dir, owner, o),
                    Status::Stale(o) => {
                        warn!(
                            "removing stale pinned state of instance {name:?} in {}{}",
                            dir.display(),
                            o.map_or(String::new(), |o| format!(" (left by pid {}, gone)", o.pid))
                        );
                        match std::fs::remove_dir_all(&dir) {
                            Ok(()) => {}
                            Err(e) if e.kind() == ErrorKind::NotFound => {}
                            Err(e) => {
                                return Err(e)
                                    .with_context(|| format!("removing {}", dir.display()))
                            }
                        }
                    }
                },
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
        bail!(
            "could not claim {}: it kept changing (another bpfnat starting?)",
            dir.display()
        )
    }

    /// Take over the stale directory `dir` left by `previous`.
    fn adopt(
        name: &str,
        dir: PathBuf,
        owner: Owner,
        previous: Option<Owner>,
    ) -> anyhow::Result<Self> {
        let claim = dir.join(CLAIM_DIR);
        match std::fs::create_dir(&claim) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => bail!(
                "instance {name:?} is being taken over by another bpfnat (or one died doing so: \
                 `bpfnat --instance {name} down` removes it)"
            ),
            Err(e) => return Err(e).with_context(|| format!("creating {}", claim.display())),
        }
        let result = (|| {
            // Someone may have taken it over between our look and our claim.
            match status_of(&dir)? {
                Status::Stale(_) => {}
                Status::Running(o) => bail!(
                    "instance {name:?} is already running (bpfnat pid {}, pinned state in {}); \
                     stop it first or choose another --instance",
                    o.pid,
                    dir.display()
                ),
                Status::Absent => {
                    bail!("{} vanished while being adopted; try again", dir.display())
                }
            }
            owner.record(&dir)
        })();
        let _ = std::fs::remove_dir(&claim);
        result?;
        info!(
            "adopting pinned state of instance {name:?} in {}{}",
            dir.display(),
            previous.map_or(String::new(), |o| format!(" (left by pid {}, gone)", o.pid))
        );
        Ok(Self {
            name: name.to_owned(),
            dir,
            owner,
            released: false,
            adopted: true,
        })
    }

    /// Whether the pinned state was taken over from a daemon that is gone.
    pub(crate) fn adopted(&self) -> bool {
        self.adopted
    }

    /// Leave the pinned state (maps, links, owner record) in place: the datapath keeps
    /// running; the next `up` adopts it, `bpfnat down` removes it.
    pub(crate) fn keep(mut self) {
        self.released = true;
        info!(
            "kept pinned state {} (the datapath keeps running)",
            self.dir.display()
        );
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Remove the pinned state (the maps live on while a process holds them) and the root
    /// directory if no other instance is left in it.
    pub(crate) fn release(mut self) -> anyhow::Result<()> {
        self.released = true;
        self.remove()
    }

    fn remove(&self) -> anyhow::Result<()> {
        match Owner::read(&self.dir) {
            Ok(Some(o)) if o == self.owner => {}
            Ok(None) if !self.dir.exists() => return Ok(()),
            // Someone decided we were gone and took the name over: theirs now.
            _ => bail!("{} is no longer ours; left in place", self.dir.display()),
        }
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("removing {}", self.dir.display()))?;
        // Fails while other instances are pinned (ENOTEMPTY), which is fine.
        let _ = std::fs::remove_dir(pin_root());
        info!("removed pinned state {}", self.dir.display());
        Ok(())
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        if !self.released && self.adopted {
            warn!(
                "left the adopted pinned state in {} in place (`bpfnat --instance {} down` \
                 removes it)",
                self.dir.display(),
                self.name
            );
        } else if !self.released {
            if let Err(e) = self.remove() {
                warn!("{e:#}");
            }
        }
    }
}

/// `bpfnat down`: remove the pinned state (links, then maps) of instance `name`, which must
/// not be running. Returns the directory removed.
pub fn down(name: &str) -> anyhow::Result<PathBuf> {
    validate_name(name)?;
    let dir = dir(name);
    match status_of(&dir)? {
        Status::Absent => bail!(
            "instance {name:?} has no pinned state (nothing in {})",
            dir.display()
        ),
        Status::Running(o) => bail!(
            "instance {name:?} is running (bpfnat pid {}): stop it first (SIGINT)",
            o.pid
        ),
        Status::Stale(_) => {}
    }
    // Links first: the programs detach before the maps they use lose their pins.
    let links = dir.join(crate::bpf::datapath::LINKS_DIR);
    if links.exists() {
        std::fs::remove_dir_all(&links).with_context(|| format!("removing {}", links.display()))?;
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    let _ = std::fs::remove_dir(pin_root());
    Ok(dir)
}

/// Packets and bytes one hook saw of one protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficRow {
    pub hook: &'static str,
    pub proto: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// The pinned maps of a running instance, opened from another process.
pub struct PinnedMaps {
    pub instance: String,
    /// Where they are pinned.
    pub dir: PathBuf,
    nat_out: Map,
    nat_in: Map,
    config: Map,
    counters: Map,
    nets: Map,
    publish: Map,
    bridges: Map,
    ports: Map,
    endpoints: Map,
    hairpin: Map,
    traffic: Map,
    nat6_out: Map,
    nat6_in: Map,
    publish6: Map,
    hairpin6: Map,
}

impl PinnedMaps {
    /// Open the maps of instance `name`; one-line error if it is not running.
    pub fn open(name: &str) -> anyhow::Result<Self> {
        crate::host::system::require_root()?;
        let dir = require_running(name)?;
        let open = |map: &str| -> anyhow::Result<Map> {
            let path = dir.join(map);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        };
        Ok(Self {
            instance: name.to_owned(),
            nat_out: open(names::MAP_NAT_OUT)?,
            nat_in: open(names::MAP_NAT_IN)?,
            config: open(names::MAP_CONFIG)?,
            counters: open(names::MAP_COUNTERS)?,
            nets: open(names::MAP_INTERNAL_NETS)?,
            publish: open(names::MAP_PUBLISH)?,
            bridges: open(names::MAP_BRIDGES)?,
            ports: open(names::MAP_PORTS)?,
            endpoints: open(names::MAP_ENDPOINTS)?,
            hairpin: open(names::MAP_HAIRPIN)?,
            traffic: open(names::MAP_TRAFFIC)?,
            nat6_out: open(names::MAP_NAT6_OUT)?,
            nat6_in: open(names::MAP_NAT6_IN)?,
            publish6: open(names::MAP_PUBLISH6)?,
            hairpin6: open(names::MAP_HAIRPIN6)?,
            dir,
        })
    }

    /// Packets and bytes by hook and protocol, summed over CPUs.
    pub(crate) fn traffic(&self) -> anyhow::Result<Vec<TrafficRow>> {
        let arr: aya::maps::PerCpuArray<&MapData, bpfnat_common::Traffic> =
            aya::maps::PerCpuArray::try_from(&self.traffic)?;
        let mut rows = Vec::new();
        for hook in bpfnat_common::HOOKS {
            let hook_name = bpfnat_common::hook_name(hook);
            for (proto, proto_name) in [
                (bpfnat_common::IPPROTO_TCP, "tcp"),
                (bpfnat_common::IPPROTO_UDP, "udp"),
                (bpfnat_common::IPPROTO_ICMP, "icmp"),
                (0, "other"),
            ] {
                let per_cpu = arr.get(&bpfnat_common::traffic_index(hook, proto), 0)?;
                rows.push(TrafficRow {
                    hook: hook_name,
                    proto: proto_name,
                    packets: per_cpu.iter().map(|t| t.packets).sum(),
                    bytes: per_cpu.iter().map(|t| t.bytes).sum(),
                });
            }
        }
        Ok(rows)
    }

    /// Both connection tables, writable.
    pub fn tables(&mut self) -> anyhow::Result<crate::bpf::datapath::NatTables<'_>> {
        crate::bpf::datapath::NatTables::new(&mut self.nat_out, &mut self.nat_in)
    }

    /// The IPv6 published ports, writable, with the IPv6 tables and the IPv6 hairpin map of
    /// the connections made through them.
    #[allow(
        clippy::type_complexity,
        reason = "three typed map handles, named by their types"
    )]
    pub fn publish6_mut(
        &mut self,
    ) -> anyhow::Result<(
        aya::maps::HashMap<&mut MapData, bpfnat_common::PublishKey6, bpfnat_common::PublishTarget6>,
        crate::bpf::datapath::NatTables6<'_>,
        aya::maps::HashMap<&mut MapData, bpfnat_common::FlowKey6, bpfnat_common::HairpinEntry6>,
    )> {
        Ok((
            aya::maps::HashMap::try_from(&mut self.publish6)?,
            crate::bpf::datapath::NatTables6 {
                out: aya::maps::HashMap::try_from(&mut self.nat6_out)?,
                inbound: aya::maps::HashMap::try_from(&mut self.nat6_in)?,
            },
            aya::maps::HashMap::try_from(&mut self.hairpin6)?,
        ))
    }

    /// Every IPv6 published host port.
    pub fn publishes6(
        &self,
    ) -> anyhow::Result<Vec<(bpfnat_common::PublishKey6, bpfnat_common::PublishTarget6)>> {
        let map: aya::maps::HashMap<
            &MapData,
            bpfnat_common::PublishKey6,
            bpfnat_common::PublishTarget6,
        > = aya::maps::HashMap::try_from(&self.publish6)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Both IPv4 tables and both IPv6 tables, writable.
    pub fn all_tables(
        &mut self,
    ) -> anyhow::Result<(
        crate::bpf::datapath::NatTables<'_>,
        crate::bpf::datapath::NatTables6<'_>,
    )> {
        Ok((
            crate::bpf::datapath::NatTables::new(&mut self.nat_out, &mut self.nat_in)?,
            crate::bpf::datapath::NatTables6 {
                out: aya::maps::HashMap::try_from(&mut self.nat6_out)?,
                inbound: aya::maps::HashMap::try_from(&mut self.nat6_in)?,
            },
        ))
    }

    /// The published ports, writable, with the tables and the hairpin map of the connections
    /// made through them (a removed publish takes its connections with it).
    #[allow(
        clippy::type_complexity,
        reason = "three typed map handles, named by their types; a struct would only rename them"
    )]
    pub fn publish_mut(
        &mut self,
    ) -> anyhow::Result<(
        aya::maps::HashMap<&mut MapData, PublishKey, PublishTarget>,
        crate::bpf::datapath::NatTables<'_>,
        aya::maps::HashMap<&mut MapData, bpfnat_common::FlowKey, HairpinEntry>,
    )> {
        Ok((
            aya::maps::HashMap::try_from(&mut self.publish)?,
            crate::bpf::datapath::NatTables::new(&mut self.nat_out, &mut self.nat_in)?,
            aya::maps::HashMap::try_from(&mut self.hairpin)?,
        ))
    }

    /// Every published host port.
    pub fn publishes(&self) -> anyhow::Result<Vec<(PublishKey, PublishTarget)>> {
        let map = aya::maps::HashMap::try_from(&self.publish)?;
        Ok(crate::bpf::datapath::read_publishes(&map))
    }

    /// What publishes are checked against.
    pub fn served(&self) -> anyhow::Result<crate::bpf::datapath::Served> {
        crate::bpf::datapath::read_served(&self.nets, &self.bridges, &self.config)
    }

    /// Bridges, ports and learned containers.
    pub(crate) fn topology(&self) -> anyhow::Result<crate::bpf::datapath::Topology> {
        crate::bpf::datapath::read_topology(&self.nets, &self.bridges, &self.ports, &self.endpoints)
    }

    pub fn config(&self) -> anyhow::Result<bpfnat_common::NatConfig> {
        crate::bpf::datapath::read_config(&self.config)
    }

    pub(crate) fn counters(&self) -> anyhow::Result<Vec<(bpfnat_common::Counter, u64)>> {
        crate::bpf::datapath::read_counters(&self.counters)
    }

    /// Entries in NAT_OUT and NAT_IN (and their IPv6 twins), and the capacity of each.
    pub(crate) fn occupancy(&self) -> anyhow::Result<Occupancy> {
        use bpfnat_common::{FlowKey, FlowKey6, NatEntry, NatEntry6};
        fn entries<K: aya::Pod, V: aya::Pod>(map: &Map) -> anyhow::Result<u64> {
            let table: aya::maps::HashMap<&MapData, K, V> = aya::maps::HashMap::try_from(map)?;
            Ok(table.keys().filter(Result::is_ok).count() as u64)
        }
        let count = entries::<FlowKey, NatEntry>;
        let count6 = entries::<FlowKey6, NatEntry6>;
        let max = |map: &Map| -> anyhow::Result<u32> {
            let data: &MapData = match map {
                Map::HashMap(d) => d,
                _ => bail!("connection map is not a hash map"),
            };
            Ok(data.info()?.max_entries())
        };
        let hairpin: aya::maps::HashMap<&MapData, bpfnat_common::FlowKey, HairpinEntry> =
            aya::maps::HashMap::try_from(&self.hairpin)?;
        let hairpin6: aya::maps::HashMap<
            &MapData,
            bpfnat_common::FlowKey6,
            bpfnat_common::HairpinEntry6,
        > = aya::maps::HashMap::try_from(&self.hairpin6)?;
        Ok(Occupancy {
            nat_out: count(&self.nat_out)?,
            nat_in: count(&self.nat_in)?,
            nat6_out: count6(&self.nat6_out)?,
            nat6_in: count6(&self.nat6_in)?,
            max_entries: max(&self.nat_out)?,
            hairpin: hairpin.keys().filter(Result::is_ok).count() as u64,
            hairpin6: hairpin6.keys().filter(Result::is_ok).count() as u64,
        })
    }
}

/// How full the connection table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub nat_out: u64,
    pub nat_in: u64,
    /// The IPv6 tables (NAT6_OUT, NAT6_IN), as large as the IPv4 ones.
    pub nat6_out: u64,
    pub nat6_in: u64,
    /// Capacity of each of the maps.
    pub max_entries: u32,
    /// Entries of the hairpin table (two per hairpin connection).
    pub hairpin: u64,
    /// Entries of the IPv6 hairpin table (two per connection).
    pub hairpin6: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["default", "lab-host", "bnt-ct-h", "x_1"] {
            validate_name(good).unwrap();
        }
        // bpffs refuses any name with a dot ("reserved for future use"), so `a.b` could never
        // be created: refused up front, with the reason.
        for bad in ["", ".", "..", "a/b", "a..b", ".hidden", "a.b", "a b", "x\n"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(resolve_name(None, None).unwrap(), "default");
        assert_eq!(resolve_name(None, Some("lab-host")).unwrap(), "lab-host");
        assert_eq!(resolve_name(Some("x"), Some("lab-host")).unwrap(), "x");
        let err = resolve_name(None, Some("a..b")).unwrap_err();
        assert!(format!("{err:#}").contains("--instance"), "{err:#}");
    }

    #[test]
    fn own_start_time_is_readable() {
        let me = Owner::current().unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(start_time(me.pid).unwrap(), Some(me.start_time));
        assert_eq!(start_time(u32::MAX).unwrap(), None);
    }
}
