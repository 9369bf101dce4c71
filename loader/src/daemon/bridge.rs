//! The bridges the datapath serves (Docker's bridge networks) and their ports.
//!
//! A bridge is given as `NAME[:OPTION,...]` (`--bridge`, repeatable) or as a `[[bridges]]`
//! table of the config file. Options: `icc=false` (no traffic between its containers, only to
//! the gateway), `internal` (nothing leaves its subnets, no masquerade), `masquerade=false`
//! (its subnets are routed untranslated) and `subnet=CIDR` (repeatable; default: the bridge's
//! own IPv4 networks). With `--docker`, the Docker daemon's bridge networks are added and
//! removed at run time (see [`crate::daemon::docker_sync`]).
//!
//! Every interface enslaved to a served bridge is a port: the daemon attaches the port program
//! to its ingress (frames from the container) and lists it in `PORTS`. Ports are looked for at
//! start and every second after, so containers started later are served; a port that goes
//! away (or leaves the bridge) is forgotten with the containers learned behind it.

use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
    str::FromStr,
};

use anyhow::{anyhow, bail, Context as _};
use aya::programs::tc::SchedClassifierLink;
use bpfnat_common::{
    addr_to_map, BridgeInfo, BRIDGE_ICC_OFF, BRIDGE_INTERNAL, BRIDGE_NO_MASQUERADE,
};
use log::{info, warn};

use crate::{
    bpf::datapath::{Datapath, TcMode},
    host::{
        iface::{self, Link},
        peer,
    },
    util::addr::{Ipv4Net, Ipv6Net},
};

/// A bridge as the user gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    /// None: the global `--icc` setting (default on).
    pub icc: Option<bool>,
    pub internal: bool,
    /// Off: its subnets leave (and are reached) untranslated, with their own addresses.
    pub masquerade: bool,
    /// Empty: the bridge's own IPv4 networks.
    pub subnets: Vec<Ipv4Net>,
    /// Empty: the bridge's own global IPv6 networks (none: no IPv6 for it).
    pub subnets6: Vec<Ipv6Net>,
}

impl BridgeSpec {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            icc: None,
            internal: false,
            masquerade: true,
            subnets: Vec::new(),
            subnets6: Vec::new(),
        }
    }
}

/// `true`/`false` and the usual spellings.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

impl FromStr for BridgeSpec {
    type Err = anyhow::Error;

    /// `NAME[:icc=BOOL,internal[=BOOL],masquerade=BOOL,subnet=CIDR,...]`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (name, options) = s.split_once(':').unwrap_or((s, ""));
        if name.is_empty() {
            bail!("bad bridge {s:?}: no name; expected NAME[:icc=false,internal,subnet=CIDR]");
        }
        let mut spec = Self::new(name);
        for option in options.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = match option.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (option, None),
            };
            let flag = |value: Option<&str>| -> anyhow::Result<bool> {
                value.map_or(Ok(true), |v| {
                    parse_bool(v)
                        .ok_or_else(|| anyhow!("bad bridge {s:?}: {key}={v} is not true or false"))
                })
            };
            match key {
                "icc" => spec.icc = Some(flag(value)?),
                "internal" => spec.internal = flag(value)?,
                "masquerade" => spec.masquerade = flag(value)?,
                "subnet" => {
                    let v = value.ok_or_else(|| anyhow!("bad bridge {s:?}: subnet needs =CIDR"))?;
                    if v.contains(':') {
                        spec.subnets6
                            .push(v.parse().with_context(|| format!("bad bridge {s:?}"))?);
                    } else {
                        spec.subnets
                            .push(v.parse().with_context(|| format!("bad bridge {s:?}"))?);
                    }
                }
                _ => bail!(
                    "bad bridge {s:?}: unknown option {key:?} (known: icc=BOOL, internal, \
                     masquerade=BOOL, subnet=CIDR)"
                ),
            }
        }
        Ok(spec)
    }
}

/// A served bridge, resolved in the current network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bridge {
    pub name: String,
    pub ifindex: u32,
    /// Its own address in its subnets: the containers' gateway (None if it has none).
    pub gateway: Option<Ipv4Addr>,
    pub mac: [u8; 6],
    pub subnets: Vec<Ipv4Net>,
    /// Its IPv6 subnets (masqueraded with the uplink's global IPv6 address).
    pub subnets6: Vec<Ipv6Net>,
    /// Its own global IPv6 address in those subnets: the containers' IPv6 gateway.
    pub gateway6: Option<std::net::Ipv6Addr>,
    pub icc: bool,
    pub internal: bool,
    pub masquerade: bool,
}

impl Bridge {
    /// What the datapath keeps about it.
    pub(crate) fn info(&self) -> BridgeInfo {
        let mut flags = 0;
        if !self.icc {
            flags |= BRIDGE_ICC_OFF;
        }
        if self.internal {
            flags |= BRIDGE_INTERNAL;
        } else if !self.masquerade {
            flags |= BRIDGE_NO_MASQUERADE;
        }
        BridgeInfo {
            gateway: self.gateway.map_or(0, |g| addr_to_map(g.octets())),
            flags,
            mac: self.mac,
            pad: [0; 2],
            gateway6: self
                .gateway6
                .map_or([0; 4], |g| bpfnat_common::addr6_to_map(g.octets())),
        }
    }

    /// Look the bridge up: index and MAC (rtnetlink), gateway and subnets (its IPv4
    /// addresses unless subnets are given). A spec without an `icc` setting gets icc on.
    pub(crate) async fn resolve(
        handle: &rtnetlink::Handle,
        links: &[Link],
        spec: &BridgeSpec,
    ) -> anyhow::Result<Self> {
        let link = links.iter().find(|l| l.name == spec.name).ok_or_else(|| {
            anyhow!(
                "unknown interface {:?} (not found in this network namespace)",
                spec.name
            )
        })?;
        let addrs = iface::ipv4_addrs(handle, &spec.name).await?;
        let subnets = if spec.subnets.is_empty() {
            let mut nets: Vec<Ipv4Net> = Vec::new();
            for net in addrs.iter().map(|a| a.network()) {
                if !nets.contains(&net) {
                    nets.push(net);
                }
            }
            if nets.is_empty() {
                bail!(
                    "bridge {:?} has no IPv4 address; give the container subnet with --subnet \
                     (or --bridge {}:subnet=CIDR)",
                    spec.name,
                    spec.name
                );
            }
            nets
        } else {
            spec.subnets.clone()
        };
        let addrs6 = iface::ipv6_assigned_addrs(handle, &spec.name).await?;
        let subnets6 = if spec.subnets6.is_empty() {
            let mut nets: Vec<Ipv6Net> = Vec::new();
            for &(addr, len) in &addrs6 {
                if let Ok(net) = Ipv6Net::new(addr, len.min(128)) {
                    if !nets.contains(&net) {
                        nets.push(net);
                    }
                }
            }
            nets
        } else {
            spec.subnets6.clone()
        };
        let gateway6 = addrs6
            .iter()
            .map(|(a, _)| *a)
            .find(|a| subnets6.iter().any(|n| n.contains(*a)));
        // The primary address inside the served subnets is what containers use as gateway.
        let gateway = addrs
            .iter()
            .filter(|a| subnets.iter().any(|n| n.contains(a.addr)))
            .min_by_key(|a| a.secondary)
            .map(|a| a.addr);
        Ok(Self {
            name: spec.name.clone(),
            ifindex: link.index,
            gateway,
            mac: link.mac.unwrap_or_default(),
            subnets,
            subnets6,
            gateway6,
            icc: spec.icc.unwrap_or(true),
            internal: spec.internal,
            masquerade: spec.masquerade,
        })
    }
}

/// Refuse subnets that overlap between bridges or hold the uplink's address: the datapath
/// finds a subnet's bridge by longest prefix, so an overlap would send one bridge's
/// containers to the other.
pub(crate) fn check_subnets(bridges: &[Bridge], external: Option<Ipv4Addr>) -> anyhow::Result<()> {
    if let Some(external) = external {
        for net in bridges.iter().flat_map(|b| &b.subnets) {
            if net.contains(external) {
                bail!(
                    "uplink address {external} is inside internal subnet {net}: check --uplink \
                     and --subnet"
                );
            }
        }
    }
    first_overlap(
        bridges,
        |b| &b.subnets,
        |a, b| a.contains(b.addr) || b.contains(a.addr),
    )?;
    first_overlap(
        bridges,
        |b| &b.subnets6,
        |a, b| a.contains(b.addr) || b.contains(a.addr),
    )
}

/// The first pair of `subnets` (of one family) of two bridges, or of one, that overlap.
fn first_overlap<N: std::fmt::Display>(
    bridges: &[Bridge],
    subnets: impl Fn(&Bridge) -> &[N],
    overlap: impl Fn(&N, &N) -> bool,
) -> anyhow::Result<()> {
    let all: Vec<(&Bridge, &N)> = bridges
        .iter()
        .flat_map(|b| subnets(b).iter().map(move |n| (b, n)))
        .collect();
    for (i, (b, net)) in all.iter().enumerate() {
        for (o, other) in &all[..i] {
            if overlap(net, other) {
                bail!(
                    "subnet {net} of bridge {:?} overlaps subnet {other} of bridge {:?}",
                    b.name,
                    o.name
                );
            }
        }
    }
    Ok(())
}

/// One port the port program is attached to.
struct Port {
    name: String,
    bridge: u32,
    /// Dropping it detaches the program, unless it is pinned.
    link: SchedClassifierLink,
    /// Where the link is pinned (TCX with pinned state).
    pin: Option<std::path::PathBuf>,
    /// We added the clsact qdisc it hangs on (clsact mode): removed when we let go.
    added_clsact: bool,
    /// The container's end, as last found and assigned (None: not found yet; the port's
    /// containers are then learned from its traffic).
    assigned: Option<peer::Peer>,
    /// Searches for its container's end so far.
    lookups: u32,
    /// We isolated it in the kernel bridge (its bridge has inter-container traffic off).
    isolated: bool,
}

/// Finds the ports of the served bridges and keeps the port program attached to exactly
/// those.
pub(crate) struct PortWatcher {
    /// TCX, or clsact on kernels without it.
    mode: TcMode,
    uplink: u32,
    /// Bridge ifindex -> name.
    bridges: BTreeMap<u32, String>,
    /// Bridge ifindex -> the addresses its containers may have: in its subnets, not its
    /// gateway.
    container_addrs: BTreeMap<u32, (Vec<Ipv4Net>, Option<Ipv4Addr>)>,
    /// The same for IPv6: its IPv6 subnets, not its IPv6 gateway.
    container_addrs6: BTreeMap<u32, (Vec<Ipv6Net>, Option<std::net::Ipv6Addr>)>,
    ports: BTreeMap<u32, Port>,
    /// Scans so far (every `REFRESH_SCANS`th one reads every port's addresses again).
    scans: u64,
    /// Bridges with inter-container traffic off: their ports are isolated in the kernel too.
    isolated: HashSet<u32>,
    /// Ports whose attachment failed, warned about once.
    failed: HashSet<u32>,
    /// The last scan failed (warned once).
    scan_failing: bool,
    /// Served bridges that are gone (warned once).
    missing: HashSet<u32>,
    /// Containers a runtime reported (Docker), for the bridges it manages.
    runtime: RuntimeEndpoints,
}

/// What a container runtime (Docker) reports about the containers of the bridges it manages.
/// Its word is authoritative there: a port of such a bridge is assigned the addresses the
/// runtime gave the container whose MAC its veth peer has, and nothing it does not report.
#[derive(Default)]
pub(crate) struct RuntimeEndpoints {
    /// Bridge ifindexes the runtime manages.
    pub bridges: HashSet<u32>,
    /// (bridge ifindex, container MAC) -> its addresses.
    pub containers: BTreeMap<(u32, [u8; 6]), Vec<Ipv4Addr>>,
    /// The containers' namespace files, where their veth ends are looked for.
    pub namespaces: Vec<std::path::PathBuf>,
    /// Changed since the last lookup: every port of those bridges is looked at again.
    changed: bool,
}

impl PortWatcher {
    /// `mode`: how the uplink was attached (resolved); the ports are attached the same way, so
    /// `--tc-mode clsact` means no TCX anywhere (and nothing pinned).
    pub(crate) fn new(bridges: &[Bridge], uplink: u32, mode: TcMode) -> Self {
        Self {
            mode: mode.resolve(),
            uplink,
            bridges: bridges
                .iter()
                .map(|b| (b.ifindex, b.name.clone()))
                .collect(),
            container_addrs: bridges
                .iter()
                .map(|b| (b.ifindex, (b.subnets.clone(), b.gateway)))
                .collect(),
            container_addrs6: bridges
                .iter()
                .map(|b| (b.ifindex, (b.subnets6.clone(), b.gateway6)))
                .collect(),
            ports: BTreeMap::new(),
            scans: 0,
            isolated: bridges
                .iter()
                .filter(|b| !b.icc)
                .map(|b| b.ifindex)
                .collect(),
            failed: HashSet::new(),
            scan_failing: false,
            missing: HashSet::new(),
            runtime: RuntimeEndpoints::default(),
        }
    }

    /// Serve one more bridge (a Docker network created at run time): its ports are attached
    /// by the next scan.
    pub(crate) fn add_bridge(&mut self, bridge: &Bridge) {
        self.bridges.insert(bridge.ifindex, bridge.name.clone());
        self.container_addrs
            .insert(bridge.ifindex, (bridge.subnets.clone(), bridge.gateway));
        self.container_addrs6
            .insert(bridge.ifindex, (bridge.subnets6.clone(), bridge.gateway6));
        if !bridge.icc {
            self.isolated.insert(bridge.ifindex);
        }
        self.missing.remove(&bridge.ifindex);
    }

    /// Stop serving a bridge (its network was removed): its ports are let go of, with the
    /// containers behind them. Returns how many ports.
    pub(crate) async fn remove_bridge(
        &mut self,
        dp: &mut Datapath,
        handle: &rtnetlink::Handle,
        bridge: u32,
    ) -> usize {
        self.bridges.remove(&bridge);
        self.container_addrs.remove(&bridge);
        self.container_addrs6.remove(&bridge);
        let was_isolated = self.isolated.remove(&bridge);
        self.missing.remove(&bridge);
        self.runtime.bridges.remove(&bridge);
        let doomed: Vec<u32> = self
            .ports
            .iter()
            .filter(|(_, p)| p.bridge == bridge)
            .map(|(i, _)| *i)
            .collect();
        for index in &doomed {
            if let Some(port) = self.ports.remove(index) {
                let still_there = iface::ifindex(&port.name).is_ok_and(|i| i == *index);
                if was_isolated && still_there {
                    let _ = iface::set_port_isolated(handle, *index, false).await;
                }
                Self::release(dp, handle, *index, port, still_there).await;
            }
        }
        doomed.len()
    }

    /// The runtime's containers (see [`RuntimeEndpoints`]): `bridges` it manages, the
    /// addresses of its containers by (bridge, MAC), and their namespace files. Applied by the
    /// next address assignment, to every port of those bridges.
    pub(crate) fn set_runtime_endpoints(
        &mut self,
        bridges: HashSet<u32>,
        containers: BTreeMap<(u32, [u8; 6]), Vec<Ipv4Addr>>,
        namespaces: Vec<std::path::PathBuf>,
    ) {
        let changed = self.runtime.bridges != bridges
            || self.runtime.containers != containers
            || self.runtime.namespaces != namespaces;
        self.runtime = RuntimeEndpoints {
            bridges,
            containers,
            namespaces,
            changed: self.runtime.changed || changed,
        };
    }

    /// How many ports are served.
    pub(crate) fn len(&self) -> usize {
        self.ports.len()
    }

    /// Look for new and vanished ports; changes and errors are logged (errors once) and
    /// retried next time.
    pub(crate) async fn rescan(&mut self, dp: &mut Datapath, handle: &rtnetlink::Handle) {
        match iface::links(handle).await {
            Ok(links) => {
                self.scan_failing = false;
                self.apply(dp, handle, &links).await;
                self.assign_addresses(dp, &links).await;
            }
            Err(e) => {
                if !self.scan_failing {
                    warn!("cannot list interfaces to find bridge ports: {e:#}");
                    self.scan_failing = true;
                }
            }
        }
    }

    /// Bring the attached ports in line with `links`.
    pub(crate) async fn apply(
        &mut self,
        dp: &mut Datapath,
        handle: &rtnetlink::Handle,
        links: &[Link],
    ) {
        for (index, name) in &self.bridges {
            let present = links.iter().any(|l| l.index == *index);
            if !present && self.missing.insert(*index) {
                warn!("bridge {name} is gone: restart bpfnat to serve it again if it comes back");
            } else if present {
                self.missing.remove(index);
            }
        }
        let wanted: BTreeMap<u32, (&str, u32)> = links
            .iter()
            .filter(|l| l.index != self.uplink)
            .filter_map(|l| {
                let master = l.master?;
                self.bridges
                    .contains_key(&master)
                    .then_some((l.index, (l.name.as_str(), master)))
            })
            .collect();

        // Gone, or no longer a port of a served bridge.
        let gone: Vec<u32> = self
            .ports
            .keys()
            .filter(|i| !wanted.contains_key(i))
            .copied()
            .collect();
        for index in gone {
            if let Some(port) = self.ports.remove(&index) {
                let still_there = links.iter().any(|l| l.index == index);
                Self::release(dp, handle, index, port, still_there).await;
            }
        }
        self.failed.retain(|i| wanted.contains_key(i));

        for (&index, &(name, bridge)) in &wanted {
            if let Some(port) = self.ports.get_mut(&index) {
                if port.name != name {
                    // Renamed: same device, same link; its pin follows the name.
                    if let (Some(old), Some(dir)) = (&port.pin, dp.pin_dir()) {
                        let new = crate::bpf::datapath::link_pin_path(
                            dir,
                            name,
                            aya::programs::TcAttachType::Ingress,
                        );
                        match std::fs::rename(old, &new) {
                            Ok(()) => port.pin = Some(new),
                            Err(e) => warn!("port {name}: cannot move its link pin: {e}"),
                        }
                    }
                }
                port.name = name.to_owned();
                if port.bridge != bridge {
                    // Moved to another served bridge: what was learned there no longer holds.
                    port.bridge = bridge;
                    if let Err(e) = dp.add_port(index, bridge) {
                        warn!("port {name}: {e:#}");
                    }
                    let _ = dp.forget_endpoints_of(index);
                }
                continue;
            }
            match self.attach(dp, handle, index, name, bridge).await {
                Ok(port) => {
                    info!(
                        "serving port {name} of bridge {}",
                        self.bridges.get(&bridge).map_or("?", String::as_str)
                    );
                    self.failed.remove(&index);
                    self.ports.insert(index, port);
                }
                Err(e) => {
                    if self.failed.insert(index) {
                        warn!("port {name} not served (tried again every second): {e:#}");
                    }
                }
            }
        }
    }

    /// Tell the datapath the addresses of the containers behind the ports, read on their
    /// end of the veth (see [`peer`]): for ports whose container was not found yet (the first
    /// `LOOKUPS` scans after it appears, then with every refresh), and for every port every
    /// `REFRESH_SCANS` scans (an address may change). A port whose container is not found
    /// (a namespace without a name) keeps learning its containers from their traffic.
    pub(crate) async fn assign_addresses(&mut self, dp: &mut Datapath, links: &[Link]) {
        const LOOKUPS: u32 = 10;
        const REFRESH_SCANS: u64 = 30;
        self.scans += 1;
        let refresh = self.scans.is_multiple_of(REFRESH_SCANS);
        let runtime_changed = std::mem::take(&mut self.runtime.changed);
        let runtime_bridges = &self.runtime.bridges;
        let wanted: Vec<peer::PortRef> = self
            .ports
            .iter_mut()
            .filter(|(_, p)| {
                refresh
                    || (runtime_changed && runtime_bridges.contains(&p.bridge))
                    || (p.assigned.is_none() && p.lookups < LOOKUPS)
            })
            .filter_map(|(&port, p)| {
                p.lookups = p.lookups.saturating_add(1);
                let link = links.iter().find(|l| l.index == port)?;
                Some(peer::PortRef {
                    port,
                    peer: link.peer?,
                    peer_netns: link.peer_netns?,
                })
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        let namespaces = self.runtime.namespaces.clone();
        let found = tokio::task::spawn_blocking(move || peer::find(&wanted, &namespaces))
            .await
            .unwrap_or_default();
        for (index, mut found) in found {
            let Some(port) = self.ports.get_mut(&index) else {
                continue;
            };
            if self.runtime.bridges.contains(&port.bridge) {
                // The runtime's word, for the container with this MAC; none yet: it has not
                // reported the container (its event is on its way), so look again then.
                found.addrs = self
                    .runtime
                    .containers
                    .get(&(port.bridge, found.mac))
                    .cloned()
                    .unwrap_or_default();
            }
            if let Some((subnets, gateway)) = self.container_addrs.get(&port.bridge) {
                found
                    .addrs
                    .retain(|a| subnets.iter().any(|n| n.contains(*a)) && Some(*a) != *gateway);
            }
            match self.container_addrs6.get(&port.bridge) {
                Some((subnets, gateway)) => found
                    .addrs6
                    .retain(|a| subnets.iter().any(|n| n.contains(*a)) && Some(*a) != *gateway),
                None => found.addrs6.clear(),
            }
            // No address yet (the runtime sets it after plugging the veth): look again.
            if (found.addrs.is_empty() && found.addrs6.is_empty())
                || port.assigned.as_ref() == Some(&found)
            {
                continue;
            }
            let assigned = if found.addrs6.is_empty() {
                Ok(())
            } else {
                dp.assign_endpoints6(index, found.mac, &found.addrs6)
            };
            let assigned = assigned.and_then(|()| {
                if found.addrs.is_empty() {
                    Ok(())
                } else {
                    dp.assign_endpoints(index, found.mac, &found.addrs)
                }
            });
            match assigned {
                Ok(()) => {
                    info!(
                        "port {}: container {} ({}), from {}",
                        port.name,
                        found
                            .addrs
                            .iter()
                            .map(Ipv4Addr::to_string)
                            .chain(found.addrs6.iter().map(ToString::to_string))
                            .collect::<Vec<_>>()
                            .join(", "),
                        iface::format_mac(&found.mac),
                        if self.runtime.bridges.contains(&port.bridge) {
                            "Docker"
                        } else {
                            "its veth"
                        }
                    );
                    port.assigned = Some(found);
                }
                Err(e) => warn!("port {}: {e:#}", port.name),
            }
        }
    }

    async fn attach(
        &mut self,
        dp: &mut Datapath,
        handle: &rtnetlink::Handle,
        index: u32,
        name: &str,
        bridge: u32,
    ) -> anyhow::Result<Port> {
        // Inter-container traffic off: the kernel bridge isolates the port as well, so that
        // what the port program does not see (flooded broadcast and multicast) or cannot
        // (before it is attached, while the loader is down) does not pass either.
        let isolated = self.isolated.contains(&bridge);
        if isolated {
            iface::set_port_isolated(handle, index, true)
                .await
                .with_context(|| format!("isolating port {name}"))?;
        }
        // Listed first: the program acts only on listed ports, so nothing happens before
        // both are in place.
        dp.add_port(index, bridge)?;
        let mut added_clsact = false;
        if self.mode == TcMode::Clsact {
            match iface::has_clsact(handle, index).await {
                Ok(true) => {}
                Ok(false) => {
                    aya::programs::tc::qdisc_add_clsact(name)
                        .with_context(|| format!("adding a clsact qdisc to {name}"))?;
                    added_clsact = true;
                }
                Err(e) => return Err(e),
            }
        }
        match dp.attach_port(name, self.mode) {
            Ok((link, how)) => {
                if how == crate::bpf::datapath::Attached::Replaced {
                    info!("port {name}: replaced the program behind its pinned link");
                }
                let pin = (self.mode != TcMode::Clsact)
                    .then(|| dp.pin_dir())
                    .flatten()
                    .map(|d| {
                        crate::bpf::datapath::link_pin_path(
                            d,
                            name,
                            aya::programs::TcAttachType::Ingress,
                        )
                    });
                Ok(Port {
                    name: name.to_owned(),
                    bridge,
                    link,
                    pin,
                    added_clsact,
                    assigned: None,
                    lookups: 0,
                    isolated,
                })
            }
            Err(e) => {
                let _ = dp.remove_port(index);
                if added_clsact {
                    let _ = iface::delete_clsact(handle, index).await;
                }
                Err(e)
            }
        }
    }

    /// Let go of a port: detach (a no-op for a device that is gone: its TCX link went with
    /// it, and dropping our handle closes the descriptor), unlist it, forget its containers.
    async fn release(
        dp: &mut Datapath,
        handle: &rtnetlink::Handle,
        index: u32,
        port: Port,
        still_there: bool,
    ) {
        let Port {
            name,
            link,
            pin,
            added_clsact,
            ..
        } = port;
        if let Some(pin) = pin {
            if let Err(e) = std::fs::remove_file(&pin) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!("port {name}: cannot unpin {}: {e}", pin.display());
                }
            }
        }
        drop(link);
        if let Err(e) = dp.remove_port(index) {
            warn!("port {name}: {e:#}");
        }
        let forgotten = dp.forget_endpoints_of(index).unwrap_or(0);
        if added_clsact && still_there {
            let _ = iface::delete_clsact(handle, index).await;
        }
        info!(
            "port {name} {}: no longer served ({forgotten} containers forgotten)",
            if still_there {
                "left the bridge"
            } else {
                "is gone"
            }
        );
    }

    /// After adopting pinned state: unpin the links of ports (and interfaces) that are no
    /// longer served, and forget ports listed in `PORTS` that this watcher does not serve,
    /// with the containers learned behind them. `keep` names the uplink's pins.
    pub(crate) fn prune(&self, dp: &mut Datapath, keep: &[std::path::PathBuf]) {
        if let Some(dir) = dp
            .pin_dir()
            .map(|d| d.join(crate::bpf::datapath::LINKS_DIR))
        {
            let ours: HashSet<&std::path::Path> = self
                .ports
                .values()
                .filter_map(|p| p.pin.as_deref())
                .chain(keep.iter().map(std::path::PathBuf::as_path))
                .collect();
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if !ours.contains(path.as_path()) {
                        match std::fs::remove_file(&path) {
                            Ok(()) => {
                                info!("unpinned the link {} (no longer served)", path.display())
                            }
                            Err(e) => warn!("cannot unpin {}: {e}", path.display()),
                        }
                    }
                }
            }
        }
        let listed: Vec<u32> = match dp.topology() {
            Ok(t) => t.ports.keys().copied().collect(),
            Err(e) => {
                warn!("cannot read the pinned ports: {e:#}");
                return;
            }
        };
        for index in listed.into_iter().filter(|i| !self.ports.contains_key(i)) {
            let _ = dp.remove_port(index);
            let forgotten = dp.forget_endpoints_of(index).unwrap_or(0);
            info!("forgot port {index} of the previous run ({forgotten} containers)");
        }
    }

    /// Detach from every port (before the datapath itself is dropped). With `keep` the
    /// pinned links stay (and the port programs with them) and `PORTS` is left as it is.
    pub(crate) async fn shutdown(
        mut self,
        dp: &mut Datapath,
        handle: &rtnetlink::Handle,
        keep: bool,
    ) {
        let ports = std::mem::take(&mut self.ports);
        for (index, port) in ports {
            let Port {
                link,
                pin,
                added_clsact,
                isolated,
                ..
            } = port;
            // Kept: the isolation stays with the programs, so the bridge's policy holds while
            // the loader is down. Stopped for good: the bridge is the kernel's again.
            if keep {
                continue;
            }
            if isolated {
                let _ = iface::set_port_isolated(handle, index, false).await;
            }
            if let Some(pin) = pin {
                let _ = std::fs::remove_file(pin);
            }
            drop(link);
            let _ = dp.remove_port(index);
            if added_clsact {
                let _ = iface::delete_clsact(handle, index).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_options() {
        assert_eq!(
            "docker0".parse::<BridgeSpec>().unwrap(),
            BridgeSpec::new("docker0")
        );
        let b: BridgeSpec = "br1:icc=false,internal,subnet=10.1.0.0/24,subnet=10.2.0.0/16"
            .parse()
            .unwrap();
        assert_eq!(b.name, "br1");
        assert_eq!((b.icc, b.internal), (Some(false), true));
        assert_eq!(b.subnets.len(), 2);
        let b: BridgeSpec = "br1:icc,internal=no,masquerade=false".parse().unwrap();
        assert_eq!(
            (b.icc, b.internal, b.masquerade),
            (Some(true), false, false)
        );
        for (bad, why) in [
            ("br1:icc=maybe", "icc=maybe is not true or false"),
            ("br1:bogus", "unknown option \"bogus\""),
            ("br1:subnet", "subnet needs =CIDR"),
            ("br1:subnet=10.0.0.0/33", "bad CIDR"),
            (":icc=false", "no name"),
        ] {
            let err = format!("{:#}", bad.parse::<BridgeSpec>().unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn datapath_flags() {
        let mut b = Bridge {
            name: "b".into(),
            ifindex: 3,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            mac: [2, 0, 0, 0, 0, 1],
            subnets: vec![],
            subnets6: vec![],
            gateway6: None,
            icc: true,
            internal: false,
            masquerade: true,
        };
        assert_eq!(b.info().flags, 0);
        assert_eq!(b.info().gateway, addr_to_map([10, 0, 0, 1]));
        b.icc = false;
        b.internal = true;
        assert_eq!(b.info().flags, BRIDGE_ICC_OFF | BRIDGE_INTERNAL);
        // Internal wins: nothing of it leaves, translated or not.
        b.masquerade = false;
        assert_eq!(b.info().flags, BRIDGE_ICC_OFF | BRIDGE_INTERNAL);
        b.internal = false;
        assert_eq!(b.info().flags, BRIDGE_ICC_OFF | BRIDGE_NO_MASQUERADE);
    }
}
