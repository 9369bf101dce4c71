//! The loaded eBPF datapath: load and verify the programs, fill the configuration maps,
//! attach to an uplink, read counters and the connection table.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, ProgramArray},
    programs::{
        links::{FdLink, LinkError, LinkOrder, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions},
        SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use bpfnat_common::{
    names, BridgeInfo, Counter, Endpoint, FlowKey, NatConfig, NatEntry, PublishKey, PublishTarget,
    Timeouts, DEFAULT_TABLE_SIZE,
};

use crate::util::addr::{Ipv4Net, Ipv6Net, PortRange};

/// The compiled datapath (built by build.rs from the `datapath-ebpf` crate).
/// Maps the daemon pins, by their name in the datapath object (also their file name).
pub(crate) const PINNED_MAPS: [&str; 28] = [
    names::MAP_NAT_OUT,
    names::MAP_NAT_IN,
    names::MAP_CONFIG,
    names::MAP_INTERNAL_NETS,
    names::MAP_COUNTERS,
    names::MAP_FRAGS,
    names::MAP_PUBLISH,
    names::MAP_BRIDGES,
    names::MAP_PORTS,
    names::MAP_ENDPOINTS,
    names::MAP_HAIRPIN,
    names::MAP_TRACE_FILTER,
    names::MAP_TRACE,
    names::MAP_TRAFFIC,
    names::MAP_EMBRYONIC,
    names::MAP_EMBRYONIC_NEXT,
    names::MAP_ASSIGNED_PORTS,
    names::MAP_NAT6_OUT,
    names::MAP_NAT6_IN,
    names::MAP_INTERNAL_NETS6,
    // Pinned so that the IPv6 programs stay reachable from the pinned links while no loader
    // runs (a program array's slots are emptied when its last user reference goes).
    names::MAP_IPV6_PROGS,
    names::MAP_ENDPOINTS6,
    names::MAP_ASSIGNED_PORTS6,
    names::MAP_PUBLISH6,
    names::MAP_EMBRYONIC6,
    names::MAP_EMBRYONIC6_NEXT,
    names::MAP_HAIRPIN6,
    // Pinned for the reason IPV6_PROGS is.
    names::MAP_HAIRPIN6_PROG,
];

pub(crate) static DATAPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath"));

/// How programs are attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TcMode {
    /// TCX on kernels that have it (>= 6.6), clsact + cls_bpf otherwise.
    Auto,
    /// TCX links (kernel >= 6.6): pinned with the instance's state, detached when the pins go.
    Tcx,
    /// Legacy clsact qdisc + cls_bpf filter via netlink.
    Clsact,
}

impl TcMode {
    pub(crate) fn resolve(self) -> Self {
        match self {
            TcMode::Auto
                if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) =>
            {
                TcMode::Tcx
            }
            TcMode::Auto => TcMode::Clsact,
            other => other,
        }
    }
}

/// Tuning given at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Entries of each connection-tracking map.
    pub table_size: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            table_size: DEFAULT_TABLE_SIZE,
        }
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    /// Where the maps (and TCX links, under `links/`) are pinned; None: nothing pinned.
    pin_dir: Option<std::path::PathBuf>,
    /// The uplink's TCX links (pinned when `pin_dir` is set): the datapath keeps running
    /// through the pins after this process is gone, until they are removed.
    uplink_links: Vec<FdLink>,
}

/// The directory of an instance's pinned TCX links.
pub(crate) const LINKS_DIR: &str = "links";

/// Where the link of `hook` on `iface` is pinned in instance directory `dir`. bpffs refuses
/// dots in names, so the interface name is escaped, one-to-one: `_` becomes `__` and `.`
/// becomes `_d` (`eth0.100` and `eth0_100`, both valid names, must not share a pin, or one
/// interface's program would replace the other's).
pub(crate) fn link_pin_path(dir: &Path, iface: &str, hook: TcAttachType) -> std::path::PathBuf {
    let hook = match hook {
        TcAttachType::Ingress => "ingress",
        TcAttachType::Egress => "egress",
        TcAttachType::Custom(_) => "custom",
    };
    let mut name = String::with_capacity(iface.len() + 8);
    for c in iface.chars() {
        match c {
            '_' => name.push_str("__"),
            '.' => name.push_str("_d"),
            c => name.push(c),
        }
    }
    dir.join(LINKS_DIR).join(format!("{name}-{hook}"))
}

/// How a program came to hang on a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attached {
    /// A new link (pinned if there is a pin directory).
    New,
    /// The program behind an existing pinned link was replaced (atomically).
    Replaced,
}

/// The connection tables hold `table_size` mappings; the ring of connections opened from
/// outside (early drop) a quarter of that.
fn size_tables(loader: &mut EbpfLoader, table_size: u32) {
    loader
        .map_max_entries(names::MAP_NAT_OUT, table_size)
        .map_max_entries(names::MAP_NAT_IN, table_size)
        .map_max_entries(names::MAP_NAT6_OUT, table_size)
        .map_max_entries(names::MAP_NAT6_IN, table_size)
        .map_max_entries(
            names::MAP_EMBRYONIC,
            bpfnat_common::embryonic_slots(table_size),
        )
        .map_max_entries(
            names::MAP_EMBRYONIC6,
            bpfnat_common::embryonic_slots(table_size),
        );
}

/// The kernel's view of one map: type, key and value size, capacity.
fn shape(info: &aya::maps::MapInfo) -> (Option<aya::maps::MapType>, u32, u32, u32) {
    (
        info.map_type().ok(),
        info.key_size(),
        info.value_size(),
        info.max_entries(),
    )
}

fn map_data(map: &aya::maps::Map) -> Option<&MapData> {
    use aya::maps::Map as M;
    match map {
        M::Array(d)
        | M::HashMap(d)
        | M::LpmTrie(d)
        | M::LruHashMap(d)
        | M::PerCpuArray(d)
        | M::PerCpuHashMap(d)
        | M::PerCpuLruHashMap(d)
        | M::ProgramArray(d)
        | M::RingBuf(d) => Some(d),
        _ => None,
    }
}

/// Refuse to adopt the maps pinned in `dir` unless each has the type, key and value size and
/// capacity this datapath object (with `opts`) creates: one line naming the first misfit.
pub(crate) fn check_pinned_maps(
    opts: LoadOptions,
    dir: &Path,
    instance: &str,
) -> anyhow::Result<()> {
    let mut loader = EbpfLoader::new();
    size_tables(&mut loader, opts.table_size);
    // Maps only (programs are loaded separately): what the object would create.
    let fresh = loader
        .load(DATAPATH_OBJECT)
        .map_err(|e| explain_load_error(anyhow::Error::new(e)))
        .context("loading the datapath's maps")?;
    for name in PINNED_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue; // created (and pinned) by the load
        }
        let have = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let want = fresh
            .map(name)
            .and_then(map_data)
            .ok_or_else(|| anyhow!("map {name} missing from the datapath object"))?
            .info()?;
        let (h, w) = (shape(&have), shape(&want));
        if h != w {
            bail!(
                "cannot adopt instance {instance:?}: pinned map {name} (type {:?}, key {} B, value \
                 {} B, {} entries) does not fit this datapath (type {:?}, key {} B, value {} B, {} \
                 entries); check --table-size, or remove the old state with `bpfnat --instance \
                 {instance} down`",
                h.0,
                h.1,
                h.2,
                h.3,
                w.0,
                w.1,
                w.2,
                w.3
            );
        }
    }
    Ok(())
}

/// Hang `prog` on `hook` of `iface` through TCX. With `pin` the link is pinned there: an
/// existing pinned link gets `prog` atomically in place of its program (the hook never runs
/// without one); a pin whose device is gone (a defunct link) is replaced by a new link.
fn attach_tcx(
    prog: &mut SchedClassifier,
    iface: &str,
    hook: TcAttachType,
    pin: Option<&Path>,
) -> anyhow::Result<(FdLink, Attached)> {
    if let Some(path) = pin {
        match PinnedLink::from_pin(path) {
            Ok(old) => {
                let replaced = SchedClassifierLink::try_from(FdLink::from(old))
                    .map_err(anyhow::Error::new)
                    .and_then(|link| Ok(prog.attach_to_link(link)?));
                match replaced {
                    Ok(id) => {
                        let link = FdLink::try_from(prog.take_link(id)?)?;
                        return Ok((link, Attached::Replaced));
                    }
                    Err(e) => {
                        log::warn!(
                            "pinned link {} is unusable ({e:#}): attaching anew",
                            path.display()
                        );
                        std::fs::remove_file(path)
                            .with_context(|| format!("removing {}", path.display()))?;
                    }
                }
            }
            Err(LinkError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }
    let id = prog
        .attach_with_options(iface, hook, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(|e| explain_attach_error(anyhow::Error::new(e), TcMode::Tcx))?;
    let link = FdLink::try_from(prog.take_link(id)?)?;
    if let Some(path) = pin {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let pinned = link
            .pin(path)
            .with_context(|| format!("pinning {}", path.display()))?;
        return Ok((FdLink::from(pinned), Attached::New));
    }
    Ok((link, Attached::New))
}

impl Datapath {
    /// Load the object and run both programs through the verifier. Nothing is attached yet.
    pub fn load(opts: LoadOptions) -> anyhow::Result<Self> {
        Self::load_with(opts, None)
    }

    /// Like [`Datapath::load`], with the maps of [`PINNED_MAPS`] pinned in
    /// `pin_dir` (which must exist, on bpffs). A map already pinned at its path is opened and
    /// used as it is instead of being created (aya's pinning-by-path): that is how a restart
    /// adopts the connection table. TCX links are pinned there too (`links/`).
    pub(crate) fn load_pinned(opts: LoadOptions, pin_dir: &Path) -> anyhow::Result<Self> {
        Self::load_with(opts, Some(pin_dir))
    }

    fn load_with(opts: LoadOptions, pin_dir: Option<&Path>) -> anyhow::Result<Self> {
        if opts.table_size == 0 {
            bail!("table size must be at least 1");
        }
        let mut loader = EbpfLoader::new();
        size_tables(&mut loader, opts.table_size);
        if let Some(dir) = pin_dir {
            for name in PINNED_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(DATAPATH_OBJECT)
            .map_err(|e| explain_load_error(anyhow::Error::new(e)))
            .context("loading the datapath's maps")?;
        for name in [
            names::PROG_EGRESS,
            names::PROG_INGRESS,
            names::PROG_PORT,
            names::PROG_EGRESS6,
            names::PROG_INGRESS6,
            names::PROG_PORT6,
            names::PROG_HAIRPIN6,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the datapath object"))?
                .try_into()?;
            prog.load()
                .map_err(|e| explain_load_error(anyhow::Error::new(e)))
                .with_context(|| format!("loading program {name}"))?;
        }
        // The tail-called programs, in their program arrays: the IPv6 programs where the IPv4
        // entry points call them, the IPv6 hairpin program where the IPv6 port program does.
        for (map, index, name) in [
            (
                names::MAP_IPV6_PROGS,
                names::IPV6_EGRESS,
                names::PROG_EGRESS6,
            ),
            (
                names::MAP_IPV6_PROGS,
                names::IPV6_INGRESS,
                names::PROG_INGRESS6,
            ),
            (names::MAP_IPV6_PROGS, names::IPV6_PORT, names::PROG_PORT6),
            (names::MAP_HAIRPIN6_PROG, 0, names::PROG_HAIRPIN6),
        ] {
            let prog: &SchedClassifier = ebpf
                .program(name)
                .ok_or_else(|| anyhow!("program {name} missing from the datapath object"))?
                .try_into()?;
            let fd = prog.fd()?.try_clone()?;
            let mut slots: ProgramArray<&mut MapData> = ProgramArray::try_from(
                ebpf.map_mut(map)
                    .ok_or_else(|| anyhow!("map {map} missing from the datapath object"))?,
            )?;
            slots
                .set(index, &fd, 0)
                .with_context(|| format!("putting {name} in its slot of {map}"))?;
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.map(Path::to_path_buf),
            uplink_links: Vec::new(),
        })
    }

    /// Where the maps and links are pinned (None: not pinned).
    pub(crate) fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Start forwarding the datapath's log records (rare events only) to the `log` crate.
    /// Must be called inside a tokio runtime.
    pub(crate) fn start_logging(&mut self) -> anyhow::Result<()> {
        let logger = aya_log::EbpfLogger::init(&mut self.ebpf).context("initialising aya-log")?;
        // SAFETY: the logger owns its ring-buffer fd and keeps it open, unchanged, for as long as
        // the AsyncFd (which owns the logger) lives.
        let mut logger = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)?
        };
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = logger.readable_mut().await else {
                    break;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
        Ok(())
    }

    /// Write the runtime configuration (external address, port range).
    pub fn configure(
        &mut self,
        external: Ipv4Addr,
        ports: Option<PortRange>,
        timeouts: &Timeouts,
    ) -> anyhow::Result<()> {
        let cfg = NatConfig {
            external_addr: bpfnat_common::addr_to_map(external.octets()),
            port_min: ports.map_or(0, |p| p.lo),
            port_max: ports.map_or(0, |p| p.hi),
            flags: 0,
            // Kept: `attach` sets it, and configuration may be rewritten afterwards.
            uplink_ifindex: self.config().map_or(0, |c| c.uplink_ifindex),
            timeouts: *timeouts,
            embryonic_slots: self
                .map(names::MAP_EMBRYONIC)
                .ok()
                .and_then(map_data)
                .and_then(|d| d.info().ok())
                .map_or(0, |i| i.max_entries()),
            // Kept: `set_external6` sets it.
            external_addr6: self.config().map_or([0; 4], |c| c.external_addr6),
        };
        let mut config: Array<&mut MapData, NatConfig> =
            Array::try_from(self.map_mut(names::MAP_CONFIG)?)?;
        config
            .set(0, cfg, 0)
            .context("writing the datapath configuration")
    }

    /// The configuration currently in the datapath.
    pub(crate) fn config(&self) -> anyhow::Result<NatConfig> {
        read_config(self.map(names::MAP_CONFIG)?)
    }

    /// Change the external IPv6 address (None: the uplink has none; translate no IPv6),
    /// keeping the rest of the configuration.
    pub fn set_external6(&mut self, external: Option<Ipv6Addr>) -> anyhow::Result<()> {
        self.update_config(|cfg| {
            cfg.external_addr6 =
                external.map_or([0; 4], |a| bpfnat_common::addr6_to_map(a.octets()));
        })
    }

    /// Change the external address (None: the uplink has none; translate nothing), keeping
    /// the rest of the configuration.
    pub(crate) fn set_external(&mut self, external: Option<Ipv4Addr>) -> anyhow::Result<()> {
        self.update_config(|cfg| {
            cfg.external_addr = external.map_or(0, |a| bpfnat_common::addr_to_map(a.octets()));
        })
    }

    /// Change one part of the configuration, keeping the rest.
    fn update_config(&mut self, change: impl FnOnce(&mut NatConfig)) -> anyhow::Result<()> {
        let mut cfg = self.config()?;
        change(&mut cfg);
        let mut config: Array<&mut MapData, NatConfig> =
            Array::try_from(self.map_mut(names::MAP_CONFIG)?)?;
        config
            .set(0, cfg, 0)
            .context("writing the datapath configuration")
    }

    /// Serve a bridge: its gateway, MAC and policy flags, and its subnets (internal, and
    /// known to live on this bridge so the datapath can forward to them and isolate them).
    pub fn add_bridge(
        &mut self,
        bridge_ifindex: u32,
        info: BridgeInfo,
        subnets: &[Ipv4Net],
    ) -> anyhow::Result<()> {
        {
            let mut bridges: HashMap<&mut MapData, u32, BridgeInfo> =
                HashMap::try_from(self.map_mut(names::MAP_BRIDGES)?)?;
            bridges
                .insert(bridge_ifindex, info, 0)
                .context("adding a bridge")?;
        }
        let mut nets: LpmTrie<&mut MapData, u32, u32> =
            LpmTrie::try_from(self.map_mut(names::MAP_INTERNAL_NETS)?)?;
        for net in subnets {
            let key = net_key(net);
            nets.insert(&key, bridge_ifindex, 0)
                .with_context(|| format!("adding subnet {net}"))?;
        }
        Ok(())
    }

    /// The IPv6 subnets of a served bridge (masqueraded with the uplink's IPv6 address).
    pub fn add_bridge_nets6(
        &mut self,
        bridge_ifindex: u32,
        subnets: &[Ipv6Net],
    ) -> anyhow::Result<()> {
        let mut nets: LpmTrie<&mut MapData, [u32; 4], u32> =
            LpmTrie::try_from(self.map_mut(names::MAP_INTERNAL_NETS6)?)?;
        for net in subnets {
            nets.insert(&net6_key(net), bridge_ifindex, 0)
                .with_context(|| format!("adding subnet {net}"))?;
        }
        Ok(())
    }

    /// Stop serving a bridge (its network was removed): its subnets are no longer internal and
    /// its entry is gone. Its ports are released by the port watcher, its mappings by the
    /// caller.
    pub(crate) fn remove_bridge(
        &mut self,
        bridge_ifindex: u32,
        subnets: &[Ipv4Net],
    ) -> anyhow::Result<()> {
        {
            let mut nets: LpmTrie<&mut MapData, u32, u32> =
                LpmTrie::try_from(self.map_mut(names::MAP_INTERNAL_NETS)?)?;
            for net in subnets {
                let key = net_key(net);
                // Only the bridge's own entry: another bridge may have been given the subnet
                // since (a network removed and created again).
                if nets.get(&key, 0).ok() == Some(bridge_ifindex) {
                    nets.remove(&key)
                        .with_context(|| format!("removing subnet {net}"))?;
                }
            }
        }
        {
            // Its IPv6 subnets, all of them: found by their value.
            let mut nets: LpmTrie<&mut MapData, [u32; 4], u32> =
                LpmTrie::try_from(self.map_mut(names::MAP_INTERNAL_NETS6)?)?;
            let doomed: Vec<Key<[u32; 4]>> = nets
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, b)| *b == bridge_ifindex)
                .map(|(k, _)| k)
                .collect();
            for key in &doomed {
                let _ = nets.remove(key);
            }
        }
        let mut bridges: HashMap<&mut MapData, u32, BridgeInfo> =
            HashMap::try_from(self.map_mut(names::MAP_BRIDGES)?)?;
        match bridges.remove(&bridge_ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("removing a bridge"),
        }
    }

    /// After adopting pinned state: stop serving the bridges a previous run served that are
    /// not in `keep` (a bridge dropped from the settings, a Docker network removed while no
    /// loader ran). Returns the subnets they had, whose mappings the caller removes.
    pub(crate) fn retain_bridges(&mut self, keep: &[u32]) -> anyhow::Result<Vec<Ipv4Net>> {
        let nets = read_nets(self.map(names::MAP_INTERNAL_NETS)?)?;
        let bridges = read_bridges(self.map(names::MAP_BRIDGES)?)?;
        let mut gone = Vec::new();
        for ifindex in bridges.keys().filter(|b| !keep.contains(b)) {
            let subnets: Vec<Ipv4Net> = nets
                .iter()
                .filter(|(_, b)| b == ifindex)
                .map(|(n, _)| *n)
                .collect();
            self.remove_bridge(*ifindex, &subnets)?;
            gone.extend(subnets);
        }
        Ok(gone)
    }

    /// Record that `port_ifindex` is a port of bridge `bridge_ifindex` (the port program only
    /// acts on known ports).
    pub fn add_port(&mut self, port_ifindex: u32, bridge_ifindex: u32) -> anyhow::Result<()> {
        let mut ports: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.map_mut(names::MAP_PORTS)?)?;
        ports
            .insert(port_ifindex, bridge_ifindex, 0)
            .context("adding a bridge port")
    }

    /// Forget a port (its interface went away or left the bridge).
    pub(crate) fn remove_port(&mut self, port_ifindex: u32) -> anyhow::Result<()> {
        let mut ports: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.map_mut(names::MAP_PORTS)?)?;
        match ports.remove(&port_ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("removing a bridge port"),
        }
    }

    /// Publish a host port (Docker's `-p`): new connections to it go to `target`.
    pub fn publish(&mut self, key: PublishKey, target: PublishTarget) -> anyhow::Result<()> {
        let mut publish: HashMap<&mut MapData, PublishKey, PublishTarget> =
            HashMap::try_from(self.map_mut(names::MAP_PUBLISH)?)?;
        publish.insert(key, target, 0).context("publishing a port")
    }

    /// Publish a host port on the uplink's IPv6 address: new connections to it go to
    /// `target`.
    pub fn publish6(
        &mut self,
        key: bpfnat_common::PublishKey6,
        target: bpfnat_common::PublishTarget6,
    ) -> anyhow::Result<()> {
        let mut publish: HashMap<
            &mut MapData,
            bpfnat_common::PublishKey6,
            bpfnat_common::PublishTarget6,
        > = HashMap::try_from(self.map_mut(names::MAP_PUBLISH6)?)?;
        publish
            .insert(key, target, 0)
            .context("publishing an IPv6 port")
    }

    /// Attach the port program to a bridge port's ingress (frames from its container), with
    /// TCX or (`TcMode::Clsact`, which needs a clsact qdisc on the port) cls_bpf. The link is
    /// the caller's: dropping it detaches the program (and is harmless once the port is gone),
    /// unless it is pinned (TCX with a pin directory: `links/<port>-ingress`, whose program
    /// is replaced in place when the pin exists already).
    pub(crate) fn attach_port(
        &mut self,
        port: &str,
        mode: TcMode,
    ) -> anyhow::Result<(SchedClassifierLink, Attached)> {
        let context = || format!("attaching {} to {port} ingress", names::PROG_PORT);
        let pin = self
            .pin_dir
            .as_deref()
            .map(|d| link_pin_path(d, port, TcAttachType::Ingress));
        if mode.resolve() != TcMode::Clsact {
            let prog = self.classifier(names::PROG_PORT)?;
            let (link, how) = attach_tcx(prog, port, TcAttachType::Ingress, pin.as_deref())
                .with_context(context)?;
            return Ok((SchedClassifierLink::try_from(link)?, how));
        }
        let prog = self.classifier(names::PROG_PORT)?;
        let id = prog
            .attach_with_options(
                port,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions::default()),
            )
            .map_err(|e| explain_attach_error(anyhow::Error::new(e), mode.resolve()))
            .with_context(context)?;
        // Out of aya's per-program table, so that a port that goes away takes its link with it
        // instead of leaving an entry (and an open descriptor) there until shutdown.
        Ok((prog.take_link(id)?, Attached::New))
    }

    /// The addresses configured on the container's end of port `port_ifindex` (and its
    /// MAC): from now on the port may send from these only, and they are its own whatever
    /// another port sent before. Replaces what was assigned or learned on the port.
    pub fn assign_endpoints(
        &mut self,
        port_ifindex: u32,
        mac: [u8; 6],
        addrs: &[Ipv4Addr],
    ) -> anyhow::Result<()> {
        let keys: Vec<(u32, String)> = addrs
            .iter()
            .map(|a| (bpfnat_common::addr_to_map(a.octets()), a.to_string()))
            .collect();
        self.assign_family(Family::V4, port_ifindex, mac, &keys)
    }

    /// [`Self::assign_endpoints`] for the port's IPv6 addresses (assigned apart from its IPv4
    /// ones).
    pub fn assign_endpoints6(
        &mut self,
        port_ifindex: u32,
        mac: [u8; 6],
        addrs: &[Ipv6Addr],
    ) -> anyhow::Result<()> {
        let keys: Vec<([u32; 4], String)> = addrs
            .iter()
            .map(|a| (bpfnat_common::addr6_to_map(a.octets()), a.to_string()))
            .collect();
        self.assign_family(Family::V6, port_ifindex, mac, &keys)
    }

    /// Forget the containers assigned to or learned behind a port that went away (so a new
    /// port given their addresses is not passed over for a dead one), both families.
    /// Returns how many.
    pub(crate) fn forget_endpoints_of(&mut self, port_ifindex: u32) -> anyhow::Result<u64> {
        Ok(self.forget_family::<[u32; 4]>(Family::V6, port_ifindex)?
            + self.forget_family::<u32>(Family::V4, port_ifindex)?)
    }

    /// Assign `addrs` (map keys, with their text for errors) to a port in one family's
    /// `ENDPOINTS` and mark the port in its `ASSIGNED_PORTS`, replacing what it had.
    fn assign_family<K: aya::Pod>(
        &mut self,
        family: Family,
        port_ifindex: u32,
        mac: [u8; 6],
        addrs: &[(K, String)],
    ) -> anyhow::Result<()> {
        self.forget_family::<K>(family, port_ifindex)?;
        let (endpoints_map, assigned_map) = family.maps();
        {
            let mut endpoints: HashMap<&mut MapData, K, Endpoint> =
                HashMap::try_from(self.map_mut(endpoints_map)?)?;
            let ep = Endpoint {
                port_ifindex,
                mac,
                flags: bpfnat_common::ENDPOINT_ASSIGNED,
                pad: 0,
            };
            for (key, text) in addrs {
                endpoints
                    .insert(*key, ep, 0)
                    .with_context(|| format!("assigning {text} to a bridge port"))?;
            }
        }
        let mut assigned: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.map_mut(assigned_map)?)?;
        assigned
            .insert(port_ifindex, addrs.len() as u32, 0)
            .context("marking a bridge port's addresses as assigned")
    }

    /// Unmark a port in one family's `ASSIGNED_PORTS` and remove its entries from that
    /// family's `ENDPOINTS`. Returns how many entries.
    fn forget_family<K: aya::Pod>(
        &mut self,
        family: Family,
        port_ifindex: u32,
    ) -> anyhow::Result<u64> {
        let (endpoints_map, assigned_map) = family.maps();
        {
            let mut assigned: HashMap<&mut MapData, u32, u32> =
                HashMap::try_from(self.map_mut(assigned_map)?)?;
            // Absent (ENOENT) when nothing was assigned: nothing to undo.
            if assigned.get(&port_ifindex, 0).is_ok() {
                assigned
                    .remove(&port_ifindex)
                    .context("unmarking a bridge port")?;
            }
        }
        let mut endpoints: HashMap<&mut MapData, K, Endpoint> =
            HashMap::try_from(self.map_mut(endpoints_map)?)?;
        let doomed: Vec<K> = endpoints
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, ep)| ep.port_ifindex == port_ifindex)
            .map(|(addr, _)| addr)
            .collect();
        Ok(doomed
            .iter()
            .filter(|a| endpoints.remove(a).is_ok())
            .count() as u64)
    }

    /// The published ports, writable.
    pub(crate) fn publish_map(
        &mut self,
    ) -> anyhow::Result<HashMap<&mut MapData, PublishKey, PublishTarget>> {
        Ok(HashMap::try_from(self.map_mut(names::MAP_PUBLISH)?)?)
    }

    /// Bridges, ports and learned containers.
    pub(crate) fn topology(&self) -> anyhow::Result<Topology> {
        read_topology(
            self.map(names::MAP_INTERNAL_NETS)?,
            self.map(names::MAP_BRIDGES)?,
            self.map(names::MAP_PORTS)?,
            self.map(names::MAP_ENDPOINTS)?,
        )
    }

    /// Mark `net` as internal (masqueraded when it leaves through the uplink) without a
    /// bridge: the datapath neither forwards to it nor applies bridge policy.
    pub fn add_internal_subnet(&mut self, net: Ipv4Net) -> anyhow::Result<()> {
        let mut nets: LpmTrie<&mut MapData, u32, u32> =
            LpmTrie::try_from(self.map_mut(names::MAP_INTERNAL_NETS)?)?;
        let key = net_key(&net);
        nets.insert(&key, 0, 0)
            .with_context(|| format!("adding internal subnet {net}"))
    }

    /// Attach both programs to `uplink`: egress translates, ingress translates back.
    /// Netlink filters go away when this `Datapath` is dropped; TCX links too unless they are
    /// pinned (with a pin directory: `links/<uplink>-<hook>`, whose programs are replaced in
    /// place when the pins exist already).
    pub(crate) fn attach(&mut self, uplink: &str, mode: TcMode) -> anyhow::Result<TcMode> {
        self.set_uplink_ifindex(crate::host::iface::ifindex(uplink)?)?;
        let mode = mode.resolve();
        if mode == TcMode::Clsact {
            match aya::programs::tc::qdisc_add_clsact(uplink) {
                Ok(()) => {}
                // Already there (another tool, or a previous run): reuse it.
                Err(aya::programs::tc::TcError::IoError(e))
                    if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("adding a clsact qdisc to {uplink}"))
                }
            }
        }
        for (name, hook) in [
            (names::PROG_EGRESS, TcAttachType::Egress),
            (names::PROG_INGRESS, TcAttachType::Ingress),
        ] {
            if mode == TcMode::Clsact {
                self.classifier(name)?
                    .attach_with_options(
                        uplink,
                        hook,
                        TcAttachOptions::Netlink(NlOptions::default()),
                    )
                    .map_err(|e| explain_attach_error(anyhow::Error::new(e), mode))
                    .with_context(|| format!("attaching {name} to {uplink} {hook:?}"))?;
                continue;
            }
            let pin = self
                .pin_dir
                .as_deref()
                .map(|d| link_pin_path(d, uplink, hook));
            let (link, how) = attach_tcx(self.classifier(name)?, uplink, hook, pin.as_deref())
                .with_context(|| format!("attaching {name} to {uplink} {hook:?}"))?;
            if how == Attached::Replaced {
                log::info!("replaced the program behind the pinned {uplink} {hook:?} link");
            }
            self.uplink_links.push(link);
        }
        Ok(mode)
    }

    /// Tell the datapath which interface is the uplink: the bridge-port program forwards
    /// routed traffic straight to it.
    pub(crate) fn set_uplink_ifindex(&mut self, uplink_ifindex: u32) -> anyhow::Result<()> {
        let mut config: Array<&mut MapData, NatConfig> =
            Array::try_from(self.map_mut(names::MAP_CONFIG)?)?;
        let mut cfg = config.get(&0, 0)?;
        cfg.uplink_ifindex = uplink_ifindex;
        config
            .set(0, cfg, 0)
            .context("writing the uplink interface")
    }

    /// Turn packet tracing on with `filter` (or off with a zeroed one).
    pub(crate) fn set_trace_filter(
        &mut self,
        filter: bpfnat_common::TraceFilter,
    ) -> anyhow::Result<()> {
        let mut map: Array<&mut MapData, bpfnat_common::TraceFilter> =
            Array::try_from(self.map_mut(names::MAP_TRACE_FILTER)?)?;
        map.set(0, filter, 0).context("writing the trace filter")
    }

    pub fn classifier(&mut self, name: &str) -> anyhow::Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the datapath object"))?
            .try_into()?)
    }

    fn map(&self, name: &str) -> anyhow::Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the datapath object"))
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the datapath object"))
    }

    /// Raw descriptors of `NAT_OUT` and `NAT_IN`, for walks that must resume from a key
    /// (aya's iterator always starts at the beginning).
    /// The fragment table (first fragments seen, for their later fragments), writable.
    pub fn frags_mut(
        &mut self,
    ) -> anyhow::Result<HashMap<&mut MapData, bpfnat_common::FragKey, bpfnat_common::FragEntry>>
    {
        Ok(HashMap::try_from(self.map_mut(names::MAP_FRAGS)?)?)
    }

    /// The original-direction table (key: tuple as sent by the container).
    pub fn nat_out(&self) -> anyhow::Result<HashMap<&MapData, FlowKey, NatEntry>> {
        Ok(HashMap::try_from(self.map(names::MAP_NAT_OUT)?)?)
    }

    /// The reply-direction table (key: tuple as the reply arrives).
    pub fn nat_in(&self) -> anyhow::Result<HashMap<&MapData, FlowKey, NatEntry>> {
        Ok(HashMap::try_from(self.map(names::MAP_NAT_IN)?)?)
    }

    pub fn nat_out_mut(&mut self) -> anyhow::Result<HashMap<&mut MapData, FlowKey, NatEntry>> {
        Ok(HashMap::try_from(self.map_mut(names::MAP_NAT_OUT)?)?)
    }

    pub fn nat_in_mut(&mut self) -> anyhow::Result<HashMap<&mut MapData, FlowKey, NatEntry>> {
        Ok(HashMap::try_from(self.map_mut(names::MAP_NAT_IN)?)?)
    }

    /// Both connection tables at once, writable (for [`crate::table::conntrack`]).
    pub fn tables(&mut self) -> anyhow::Result<NatTables<'_>> {
        match self
            .ebpf
            .maps_disjoint_mut([names::MAP_NAT_OUT, names::MAP_NAT_IN])
        {
            [Some(out), Some(inbound)] => NatTables::new(out, inbound),
            _ => bail!("connection maps missing from the datapath object"),
        }
    }

    /// The published ports with the tables their connections live in (both connection
    /// halves and the hairpin table), writable: what re-targeting or removing a publish
    /// touches.
    #[allow(
        clippy::type_complexity,
        reason = "the three maps a publish change touches, as `publish::Flows` takes them"
    )]
    pub(crate) fn publish_tables(
        &mut self,
    ) -> anyhow::Result<(
        HashMap<&mut MapData, PublishKey, PublishTarget>,
        NatTables<'_>,
        HashMap<&mut MapData, FlowKey, bpfnat_common::HairpinEntry>,
    )> {
        match self.ebpf.maps_disjoint_mut([
            names::MAP_PUBLISH,
            names::MAP_NAT_OUT,
            names::MAP_NAT_IN,
            names::MAP_HAIRPIN,
        ]) {
            [Some(publish), Some(out), Some(inbound), Some(hairpin)] => Ok((
                HashMap::try_from(publish)?,
                NatTables::new(out, inbound)?,
                HashMap::try_from(hairpin)?,
            )),
            _ => bail!("publish or connection maps missing from the datapath object"),
        }
    }

    /// The IPv6 published ports with the IPv6 connection tables and the IPv6 hairpin table,
    /// writable: what an IPv6 publish change touches (as `publish6::Flows6` takes them).
    #[allow(
        clippy::type_complexity,
        reason = "the maps an IPv6 publish change touches"
    )]
    pub fn publish6_tables(
        &mut self,
    ) -> anyhow::Result<(
        HashMap<&mut MapData, bpfnat_common::PublishKey6, bpfnat_common::PublishTarget6>,
        NatTables6<'_>,
        HashMap<&mut MapData, bpfnat_common::FlowKey6, bpfnat_common::HairpinEntry6>,
    )> {
        match self.ebpf.maps_disjoint_mut([
            names::MAP_PUBLISH6,
            names::MAP_NAT6_OUT,
            names::MAP_NAT6_IN,
            names::MAP_HAIRPIN6,
        ]) {
            [Some(publish), Some(out), Some(inbound), Some(hairpin)] => Ok((
                HashMap::try_from(publish)?,
                NatTables6 {
                    out: HashMap::try_from(out)?,
                    inbound: HashMap::try_from(inbound)?,
                },
                HashMap::try_from(hairpin)?,
            )),
            _ => bail!("IPv6 publish or connection maps missing from the datapath object"),
        }
    }

    /// The IPv6 connection tables, writable.
    pub fn tables6(&mut self) -> anyhow::Result<NatTables6<'_>> {
        match self
            .ebpf
            .maps_disjoint_mut([names::MAP_NAT6_OUT, names::MAP_NAT6_IN])
        {
            [Some(out), Some(inbound)] => Ok(NatTables6 {
                out: HashMap::try_from(out)?,
                inbound: HashMap::try_from(inbound)?,
            }),
            _ => bail!("IPv6 connection maps missing from the datapath object"),
        }
    }

    /// The hairpin connections, writable (expiry).
    pub(crate) fn hairpin_map(
        &mut self,
    ) -> anyhow::Result<HashMap<&mut MapData, FlowKey, bpfnat_common::HairpinEntry>> {
        Ok(HashMap::try_from(self.map_mut(names::MAP_HAIRPIN)?)?)
    }

    /// The IPv6 hairpin connections, writable (expiry).
    pub fn hairpin6_map(
        &mut self,
    ) -> anyhow::Result<HashMap<&mut MapData, bpfnat_common::FlowKey6, bpfnat_common::HairpinEntry6>>
    {
        Ok(HashMap::try_from(self.map_mut(names::MAP_HAIRPIN6)?)?)
    }

    /// Counters summed over all CPUs, in `Counter::ALL` order.
    pub(crate) fn counters(&self) -> anyhow::Result<Vec<(Counter, u64)>> {
        read_counters(self.map(names::MAP_COUNTERS)?)
    }

    /// One counter summed over all CPUs.
    pub fn counter(&self, which: Counter) -> anyhow::Result<u64> {
        Ok(self
            .counters()?
            .into_iter()
            .find(|(c, _)| *c == which)
            .map_or(0, |(_, v)| v))
    }
}

/// The two halves of the IPv6 connection table, writable.
pub struct NatTables6<'a> {
    pub out: HashMap<&'a mut MapData, bpfnat_common::FlowKey6, bpfnat_common::NatEntry6>,
    pub inbound: HashMap<&'a mut MapData, bpfnat_common::FlowKey6, bpfnat_common::NatEntry6>,
}

/// The two halves of the connection table, writable.
pub struct NatTables<'a> {
    /// Original direction (`NAT_OUT`).
    pub out: HashMap<&'a mut MapData, FlowKey, NatEntry>,
    /// Reply direction (`NAT_IN`).
    pub inbound: HashMap<&'a mut MapData, FlowKey, NatEntry>,
    /// The two maps' descriptors, for the raw batch commands (`out`, `inbound`).
    pub(crate) fds: (std::os::fd::RawFd, std::os::fd::RawFd),
}

impl<'a> NatTables<'a> {
    pub(crate) fn new(
        out: &'a mut aya::maps::Map,
        inbound: &'a mut aya::maps::Map,
    ) -> anyhow::Result<Self> {
        let fds = (raw_fd(out, "NAT_OUT")?, raw_fd(inbound, "NAT_IN")?);
        Ok(Self {
            out: HashMap::try_from(out).context("NAT_OUT")?,
            inbound: HashMap::try_from(inbound).context("NAT_IN")?,
            fds,
        })
    }
}

/// The descriptor of a hash map (valid as long as the map is).
fn raw_fd(map: &aya::maps::Map, name: &str) -> anyhow::Result<std::os::fd::RawFd> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    match map {
        aya::maps::Map::HashMap(data) => Ok(data.fd().as_fd().as_raw_fd()),
        _ => Err(anyhow!("map {name} is not a hash map")),
    }
}

/// An address family's containers maps.
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    /// Its `ENDPOINTS` and `ASSIGNED_PORTS` maps.
    fn maps(self) -> (&'static str, &'static str) {
        match self {
            Family::V4 => (names::MAP_ENDPOINTS, names::MAP_ASSIGNED_PORTS),
            Family::V6 => (names::MAP_ENDPOINTS6, names::MAP_ASSIGNED_PORTS6),
        }
    }
}

/// The `INTERNAL_NETS6` key of a subnet.
fn net6_key(net: &Ipv6Net) -> Key<[u32; 4]> {
    Key::new(
        u32::from(net.prefix_len),
        bpfnat_common::addr6_to_map(net.addr.octets()),
    )
}

/// The `INTERNAL_NETS` key of a subnet.
fn net_key(net: &Ipv4Net) -> Key<u32> {
    Key::new(
        u32::from(net.prefix_len),
        bpfnat_common::addr_to_map(net.addr.octets()),
    )
}

/// The subnets of an `INTERNAL_NETS` trie with their bridge's ifindex.
pub(crate) fn read_nets(map: &aya::maps::Map) -> anyhow::Result<Vec<(Ipv4Net, u32)>> {
    let nets: LpmTrie<&MapData, u32, u32> = LpmTrie::try_from(map)?;
    let mut out: Vec<(Ipv4Net, u32)> = nets
        .iter()
        .filter_map(Result::ok)
        .filter_map(|(key, bridge)| {
            let addr = Ipv4Addr::from(key.data().to_ne_bytes());
            Some((Ipv4Net::new(addr, key.prefix_len() as u8).ok()?, bridge))
        })
        .collect();
    out.sort_by_key(|(n, _)| (u32::from(n.addr), n.prefix_len));
    Ok(out)
}

/// The bridges of a `BRIDGES` map.
pub(crate) fn read_bridges(map: &aya::maps::Map) -> anyhow::Result<BTreeMap<u32, BridgeInfo>> {
    let bridges: HashMap<&MapData, u32, BridgeInfo> = HashMap::try_from(map)?;
    Ok(bridges.iter().filter_map(Result::ok).collect())
}

/// What a publish is checked against: the served subnets and bridges, the uplink address.
#[derive(Clone, Debug, Default)]
pub struct Served {
    /// Subnet and the ifindex of its bridge.
    pub nets: Vec<(Ipv4Net, u32)>,
    pub bridges: BTreeMap<u32, BridgeInfo>,
    pub external: Option<Ipv4Addr>,
}

impl Served {
    /// The most specific served subnet holding `addr`, and its bridge.
    pub(crate) fn subnet_of(&self, addr: Ipv4Addr) -> Option<(Ipv4Net, u32)> {
        self.nets
            .iter()
            .filter(|(n, _)| n.contains(addr))
            .max_by_key(|(n, _)| n.prefix_len)
            .copied()
    }
}

/// Every entry of a `PUBLISH` map.
pub(crate) fn read_publishes<T: std::borrow::Borrow<MapData>>(
    map: &HashMap<T, PublishKey, PublishTarget>,
) -> Vec<(PublishKey, PublishTarget)> {
    map.iter().filter_map(Result::ok).collect()
}

/// What publishes are checked against, from the pinned (or loaded) maps.
pub(crate) fn read_served(
    nets: &aya::maps::Map,
    bridges: &aya::maps::Map,
    config: &aya::maps::Map,
) -> anyhow::Result<Served> {
    let external = read_config(config)?.external_addr;
    Ok(Served {
        nets: read_nets(nets)?,
        bridges: read_bridges(bridges)?,
        external: (external != 0).then(|| Ipv4Addr::from(external.to_ne_bytes())),
    })
}

/// The bridges the datapath serves, their ports and the containers it has seen.
#[derive(Clone, Debug, Default)]
pub(crate) struct Topology {
    /// Subnet -> bridge ifindex.
    pub nets: Vec<(Ipv4Net, u32)>,
    pub bridges: BTreeMap<u32, BridgeInfo>,
    /// Port ifindex -> bridge ifindex.
    pub ports: BTreeMap<u32, u32>,
    /// Container address -> where it was seen, sorted by address.
    pub endpoints: Vec<(Ipv4Addr, Endpoint)>,
}

pub(crate) fn read_topology(
    nets: &aya::maps::Map,
    bridges: &aya::maps::Map,
    ports: &aya::maps::Map,
    endpoints: &aya::maps::Map,
) -> anyhow::Result<Topology> {
    let ports: HashMap<&MapData, u32, u32> = HashMap::try_from(ports)?;
    let endpoints: HashMap<&MapData, u32, Endpoint> = HashMap::try_from(endpoints)?;
    let mut endpoints: Vec<(Ipv4Addr, Endpoint)> = endpoints
        .iter()
        .filter_map(Result::ok)
        .map(|(a, ep)| (Ipv4Addr::from(a.to_ne_bytes()), ep))
        .collect();
    endpoints.sort_by_key(|(a, _)| u32::from(*a));
    Ok(Topology {
        nets: read_nets(nets)?,
        bridges: read_bridges(bridges)?,
        ports: ports.iter().filter_map(Result::ok).collect(),
        endpoints,
    })
}

/// The configuration in a `CONFIG` map.
pub(crate) fn read_config(map: &aya::maps::Map) -> anyhow::Result<NatConfig> {
    let config: Array<&MapData, NatConfig> = Array::try_from(map)?;
    Ok(config.get(&0, 0)?)
}

/// The counters of a `COUNTERS` map summed over all CPUs, in `Counter::ALL` order.
pub fn read_counters(map: &aya::maps::Map) -> anyhow::Result<Vec<(Counter, u64)>> {
    let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
    Counter::ALL
        .iter()
        .map(|&c| Ok((c, counters.get(&(c as u32), 0)?.iter().sum())))
        .collect()
}

/// Turn the kernel's terse errors into an actionable one-liner.
fn explain_load_error(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        err.context("the kernel refused to load BPF: run as root (needs CAP_BPF and CAP_NET_ADMIN)")
    } else if text.contains("Invalid argument") || text.contains("not supported") {
        err.context(
            "the kernel rejected the datapath: it needs BPF with BTF, hash/LPM/per-CPU maps and TC \
             classifiers (Linux >= 5.15; TCX needs >= 6.6)",
        )
    } else {
        err
    }
}

fn explain_attach_error(err: anyhow::Error, mode: TcMode) -> anyhow::Error {
    match mode {
        TcMode::Tcx => err.context("TCX attach failed (needs Linux >= 6.6; try --tc-mode clsact)"),
        _ => err,
    }
}

/// One program attached to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedProgram {
    pub hook: &'static str,
    pub name: String,
    pub id: u32,
}

/// The programs attached to `iface` through TCX (current network namespace), egress then
/// ingress, in run order. Empty on kernels without TCX.
pub fn tcx_programs(iface: &str) -> anyhow::Result<Vec<AttachedProgram>> {
    crate::host::iface::ifindex(iface)?;
    let mut out = Vec::new();
    for (hook, attach) in [
        ("egress", TcAttachType::Egress),
        ("ingress", TcAttachType::Ingress),
    ] {
        let Ok((_, progs)) = SchedClassifier::query_tcx(iface, attach) else {
            continue;
        };
        for p in progs {
            out.push(AttachedProgram {
                hook,
                name: p.name_as_str().unwrap_or("?").to_owned(),
                id: p.id(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Item 12 of issue 13: interface names that differ only by `.` and `_` get different
    /// link pins (bpffs refuses dots, and a shared pin let one interface's program replace
    /// the other's).
    #[test]
    fn link_pins_of_dotted_and_underscored_names_differ() {
        let dir = Path::new("/sys/fs/bpf/bpfnat/x");
        let pin = |name| link_pin_path(dir, name, TcAttachType::Ingress);
        let names = [
            "eth0.100",
            "eth0_100",
            "eth0__100",
            "eth0_d100",
            "eth0.d100",
            "eth0",
        ];
        let pins: std::collections::HashSet<_> = names.iter().map(|n| pin(n)).collect();
        assert_eq!(pins.len(), names.len(), "{pins:?}");
        for p in &pins {
            assert!(!p.file_name().unwrap().to_string_lossy().contains('.'));
        }
        assert_eq!(pin("veth-ns1"), dir.join("links/veth-ns1-ingress"));
    }
}
