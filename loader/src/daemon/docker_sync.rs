//! Applying what Docker reports ([`DockerState`]) to the datapath: the bridges served, the
//! containers' addresses on their ports, and the published ports with their connections.
//!
//! Every snapshot is applied whole (level-triggered): the same code serves start-up, each
//! event and the reconnection after a restart of either side, and whatever was missed in
//! between is put right by the next one.
//!
//! - A bridge network is served once its Linux bridge exists (it is looked for again at
//!   every scan until then) and removed with its ports and its mappings when the network is.
//!   A network on a bridge given with `--bridge` is left to that setting.
//! - The containers' addresses are Docker's (see [`PortWatcher::set_runtime_endpoints`]).
//! - Published ports are the `PUBLISH` entries that lead into a Docker network: those Docker
//!   no longer reports are removed with their connections, the others added. A container
//!   that stopped, or came back with a new endpoint (a restart on the same address), loses
//!   its mappings, so that nothing of the old container's traffic reaches the new one
//!   through a stale mapping (moby#53384).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use bpfnat_common::{
    addr6_from_map, addr6_to_map, PublishKey, PublishKey6, PublishTarget, PublishTarget6,
};
use log::{info, warn};

use crate::{
    bpf::datapath::Datapath,
    daemon::{
        bridge::{check_subnets, Bridge, BridgeSpec, PortWatcher},
        docker::{DockerState, Network},
    },
    host::iface,
    table::{conntrack, conntrack6, publish::Flows, publish6::Flows6},
    util::addr::{Ipv4Net, Ipv6Net},
};

/// What has been applied of Docker's state.
pub(crate) struct DockerSync {
    /// Network id -> the bridge served for it.
    served: BTreeMap<String, Bridge>,
    /// Networks not served (yet), by id, with why (warned once per reason).
    waiting: BTreeMap<String, String>,
    /// Bridges given with `--bridge`, by name: Docker networks on them keep those settings.
    fixed: Vec<Bridge>,
    /// Publishes given with `--publish`: never removed as Docker's.
    fixed_publishes: HashSet<PublishKey>,
    fixed_publishes6: HashSet<PublishKey6>,
    /// Container address -> its endpoint id, as last applied (None: nothing applied yet).
    endpoints: Option<BTreeMap<Ipv4Addr, String>>,
    /// The same for IPv6 addresses.
    endpoints6: Option<BTreeMap<Ipv6Addr, String>>,
    /// Publish skips already warned about.
    skipped: BTreeSet<String>,
    /// The last state applied in full.
    last: Option<DockerState>,
}

impl DockerSync {
    pub(crate) fn new(
        fixed: &[Bridge],
        fixed_publishes: HashSet<PublishKey>,
        fixed_publishes6: HashSet<PublishKey6>,
    ) -> Self {
        Self {
            served: BTreeMap::new(),
            waiting: BTreeMap::new(),
            fixed: fixed.to_vec(),
            fixed_publishes,
            fixed_publishes6,
            endpoints: None,
            endpoints6: None,
            skipped: BTreeSet::new(),
            last: None,
        }
    }

    /// The bridges served for Docker.
    pub(crate) fn bridges(&self) -> impl Iterator<Item = &Bridge> {
        self.served.values()
    }

    /// Whether a network is waiting for its bridge (the caller applies the state again at
    /// the next scan).
    pub(crate) fn pending(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Bring the datapath in line with `state`.
    pub(crate) async fn apply(
        &mut self,
        state: &DockerState,
        dp: &mut Datapath,
        ports: &mut PortWatcher,
        netlink: &rtnetlink::Handle,
        external: Option<Ipv4Addr>,
        timeouts: &bpfnat_common::Timeouts,
    ) {
        self.networks(state, dp, ports, netlink, external, timeouts)
            .await;
        self.containers(state, dp, ports, timeouts);
        if let Err(e) = self.publishes(state, dp) {
            warn!("Docker: published ports not applied: {e:#}");
        }
        if let Err(e) = self.publishes6(state, dp) {
            warn!("Docker: IPv6 published ports not applied: {e:#}");
        }
        for skip in &state.skipped {
            if self.skipped.insert(skip.clone()) {
                warn!("Docker: published port not served: {skip}");
            }
        }
        self.last = Some(state.clone());
    }

    /// Serve new bridge networks, stop serving removed ones.
    async fn networks(
        &mut self,
        state: &DockerState,
        dp: &mut Datapath,
        ports: &mut PortWatcher,
        netlink: &rtnetlink::Handle,
        external: Option<Ipv4Addr>,
        timeouts: &bpfnat_common::Timeouts,
    ) {
        let gone: Vec<String> = self
            .served
            .keys()
            .filter(|id| !state.networks.iter().any(|n| n.id == **id))
            .cloned()
            .collect();
        for id in gone {
            let Some(bridge) = self.served.remove(&id) else {
                continue;
            };
            let released = ports.remove_bridge(dp, netlink, bridge.ifindex).await;
            if let Err(e) = dp.remove_bridge(bridge.ifindex, &bridge.subnets) {
                warn!("Docker: bridge {}: {e:#}", bridge.name);
            }
            let removed = remove_mappings(dp, timeouts, |a| {
                bridge.subnets.iter().any(|n| n.contains(a))
            });
            info!(
                "Docker network on {} removed: no longer served ({released} ports, {removed} \
                 mappings removed)",
                bridge.name
            );
        }
        self.waiting
            .retain(|id, _| state.networks.iter().any(|n| n.id == *id));

        let links = match iface::links(netlink).await {
            Ok(l) => l,
            Err(e) => {
                warn!("Docker: cannot list interfaces: {e:#}");
                return;
            }
        };
        for net in &state.networks {
            if self.served.contains_key(&net.id) {
                continue;
            }
            match self.serve(net, dp, ports, netlink, &links, external).await {
                Ok(bridge) => {
                    self.waiting.remove(&net.id);
                    info!(
                        "serving Docker network {} on {} ({}{}{}{})",
                        net.name,
                        bridge.name,
                        bridge
                            .subnets
                            .iter()
                            .map(ToString::to_string)
                            .chain(bridge.subnets6.iter().map(ToString::to_string))
                            .collect::<Vec<_>>()
                            .join(","),
                        if bridge.internal { ", internal" } else { "" },
                        if bridge.icc { "" } else { ", icc off" },
                        if bridge.masquerade || bridge.internal {
                            ""
                        } else {
                            ", masquerade off"
                        }
                    );
                    self.served.insert(net.id.clone(), bridge);
                }
                Err(why) => {
                    if self.waiting.get(&net.id) != Some(&why) {
                        warn!("Docker network {} not served yet: {why}", net.name);
                        self.waiting.insert(net.id.clone(), why);
                    }
                }
            }
        }
    }

    /// Serve one network's bridge; Err says why not (yet).
    async fn serve(
        &self,
        net: &Network,
        dp: &mut Datapath,
        ports: &mut PortWatcher,
        netlink: &rtnetlink::Handle,
        links: &[iface::Link],
        external: Option<Ipv4Addr>,
    ) -> Result<Bridge, String> {
        if self.fixed.iter().any(|b| b.name == net.bridge) {
            return Err(format!(
                "its bridge {} is served with the settings of --bridge",
                net.bridge
            ));
        }
        if !links.iter().any(|l| l.name == net.bridge) {
            return Err(format!("its bridge {} does not exist (yet)", net.bridge));
        }
        let spec = BridgeSpec {
            name: net.bridge.clone(),
            icc: Some(net.icc),
            internal: net.internal,
            masquerade: net.masquerade,
            subnets: net.subnets.clone(),
            subnets6: net.subnets6.clone(),
        };
        let bridge = Bridge::resolve(netlink, links, &spec)
            .await
            .map_err(|e| format!("{e:#}"))?;
        // Against every bridge served, of either kind, in both families.
        let mut all: Vec<Bridge> = self
            .fixed
            .iter()
            .chain(self.served.values())
            .cloned()
            .collect();
        all.push(bridge.clone());
        check_subnets(&all, external).map_err(|e| format!("{e:#}"))?;
        dp.add_bridge(bridge.ifindex, bridge.info(), &bridge.subnets)
            .map_err(|e| format!("{e:#}"))?;
        dp.add_bridge_nets6(bridge.ifindex, &bridge.subnets6)
            .map_err(|e| format!("{e:#}"))?;
        ports.add_bridge(&bridge);
        Ok(bridge)
    }

    /// Tell the port watcher Docker's containers; remove the mappings of containers that
    /// stopped or restarted.
    fn containers(
        &mut self,
        state: &DockerState,
        dp: &mut Datapath,
        ports: &mut PortWatcher,
        timeouts: &bpfnat_common::Timeouts,
    ) {
        let by_network: HashMap<&str, u32> = self
            .served
            .iter()
            .map(|(id, b)| (id.as_str(), b.ifindex))
            .collect();
        let mut containers: BTreeMap<(u32, [u8; 6]), Vec<Ipv4Addr>> = BTreeMap::new();
        for ep in &state.endpoints {
            if let Some(&bridge) = by_network.get(ep.network.as_str()) {
                containers
                    .entry((bridge, ep.mac))
                    .or_default()
                    .push(ep.addr);
            }
        }
        ports.set_runtime_endpoints(
            self.served.values().map(|b| b.ifindex).collect(),
            containers,
            state.sandboxes.clone(),
        );

        let now: BTreeMap<Ipv4Addr, String> = state
            .endpoints
            .iter()
            .map(|e| (e.addr, e.endpoint_id.clone()))
            .collect();
        let now6: BTreeMap<Ipv6Addr, String> = state
            .endpoints
            .iter()
            .filter_map(|e| Some((e.addr6?, e.endpoint_id.clone())))
            .collect();
        let stale6: Vec<[u32; 4]> = match &self.endpoints6 {
            Some(before) => before
                .iter()
                .filter(|(addr, id)| now6.get(addr) != Some(id))
                .map(|(addr, _)| addr6_to_map(addr.octets()))
                .collect(),
            None => Vec::new(),
        };
        if !stale6.is_empty() {
            if let Ok(mut t6) = dp.tables6() {
                let removed = conntrack6::remove6_where(
                    &mut t6,
                    timeouts,
                    crate::table::timeouts::monotonic_ns(),
                    |c| stale6.contains(&c.original.src_addr),
                );
                if removed > 0 {
                    info!("Docker: {removed} IPv6 mappings of containers that stopped or restarted removed");
                }
            }
        }
        self.endpoints6 = Some(now6);
        let docker_nets: Vec<Ipv4Net> = self
            .served
            .values()
            .flat_map(|b| b.subnets.iter().copied())
            .collect();
        // Gone or restarted since the last state; at the first one (bpfnat just started,
        // perhaps after a crash), every address of a Docker network that no container has.
        // The table is only walked when there is something to remove.
        let removed = match &self.endpoints {
            Some(before) => {
                let stale: Vec<Ipv4Addr> = before
                    .iter()
                    .filter(|(addr, id)| now.get(addr) != Some(id))
                    .map(|(addr, _)| *addr)
                    .collect();
                if stale.is_empty() {
                    0
                } else {
                    remove_mappings(dp, timeouts, |a| stale.contains(&a))
                }
            }
            None => remove_mappings(dp, timeouts, |a| {
                docker_nets.iter().any(|n| n.contains(a)) && !now.contains_key(&a)
            }),
        };
        if removed > 0 {
            info!("Docker: {removed} mappings of containers that stopped or restarted removed");
        }
        self.endpoints = Some(now);
    }

    /// Publish what Docker publishes, unpublish what it no longer does (with the
    /// connections made through it).
    fn publishes(&self, state: &DockerState, dp: &mut Datapath) -> anyhow::Result<()> {
        let docker_nets: Vec<Ipv4Net> = self
            .served
            .values()
            .flat_map(|b| b.subnets.iter().copied())
            .collect();
        // Docker's: into a served network (the others wait for it), not given with
        // --publish.
        let ours = |k: &PublishKey, t: &PublishTarget| {
            let addr = Ipv4Addr::from(t.addr.to_ne_bytes());
            docker_nets.iter().any(|n| n.contains(addr)) && !self.fixed_publishes.contains(k)
        };
        let wanted = state.publishes.iter().map(|p| (p.key, p.target));
        let (mut map, tables, hairpin) = dp.publish_tables()?;
        let doomed = reconcile(&mut map, wanted, ours, describe);
        let removed = Flows { tables, hairpin }.remove(&doomed);
        if removed > 0 {
            info!("Docker: {removed} connections through unpublished ports removed");
        }
        Ok(())
    }

    /// [`Self::publishes`] for the ports Docker publishes on `[::]`.
    fn publishes6(&self, state: &DockerState, dp: &mut Datapath) -> anyhow::Result<()> {
        let docker_nets: Vec<Ipv6Net> = self
            .served
            .values()
            .flat_map(|b| b.subnets6.iter().copied())
            .collect();
        let ours = |k: &PublishKey6, t: &PublishTarget6| {
            let addr = Ipv6Addr::from(addr6_from_map(t.addr));
            docker_nets.iter().any(|n| n.contains(addr)) && !self.fixed_publishes6.contains(k)
        };
        let wanted = state.publishes6.iter().map(|p| (p.key, p.target));
        let (mut map, tables, hairpin) = dp.publish6_tables()?;
        let doomed = reconcile(&mut map, wanted, ours, |k, t| {
            format!(
                "[::]:{}/{} -> [{}]:{}",
                u16::from_be(k.host_port),
                crate::util::addr::proto_name(k.proto),
                Ipv6Addr::from(addr6_from_map(t.addr)),
                u16::from_be(t.port)
            )
        });
        let removed = Flows6 { tables, hairpin }.remove(&doomed);
        if removed > 0 {
            info!("Docker: {removed} IPv6 connections through unpublished ports removed");
        }
        Ok(())
    }
}

/// Bring the published ports of `map` that are `ours` in line with `wanted` (the others are
/// left alone): add what is new, re-target what changed, remove what went. Returns the
/// entries whose connections must go (removed or re-targeted, with their old target).
/// `describe` names an entry in the log.
fn reconcile<K, V>(
    map: &mut aya::maps::HashMap<&mut aya::maps::MapData, K, V>,
    wanted: impl Iterator<Item = (K, V)>,
    ours: impl Fn(&K, &V) -> bool,
    describe: impl Fn(&K, &V) -> String,
) -> Vec<(K, V)>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod + PartialEq,
{
    let wanted: HashMap<K, V> = wanted.filter(|(k, v)| ours(k, v)).collect();
    let current: Vec<(K, V)> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| ours(k, v))
        .collect();
    let mut doomed = Vec::new();
    for (key, value) in &current {
        if wanted.get(key) != Some(value) {
            if !wanted.contains_key(key) {
                map.remove(key).ok();
            }
            info!("Docker: unpublished {}", describe(key, value));
            doomed.push((*key, *value));
        }
    }
    for (key, value) in &wanted {
        if !current.contains(&(*key, *value)) {
            match map.insert(*key, *value, 0) {
                Ok(()) => info!("Docker: published {}", describe(key, value)),
                Err(e) => warn!(
                    "Docker: cannot publish {}: {e} (is the table full?)",
                    describe(key, value)
                ),
            }
        }
    }
    doomed
}

/// `8080/tcp -> 172.18.0.2:80`.
fn describe(key: &PublishKey, target: &PublishTarget) -> String {
    let host = if key.host_addr == 0 {
        String::new()
    } else {
        format!("{}:", Ipv4Addr::from(key.host_addr.to_ne_bytes()))
    };
    format!(
        "{host}{}/{} -> {}:{}",
        u16::from_be(key.host_port),
        crate::util::addr::proto_name(key.proto),
        Ipv4Addr::from(target.addr.to_ne_bytes()),
        u16::from_be(target.port)
    )
}

/// Remove the mappings whose container side (the original tuple's source: the container's
/// address, for masqueraded and published connections alike) matches `pred`.
fn remove_mappings(
    dp: &mut Datapath,
    timeouts: &bpfnat_common::Timeouts,
    pred: impl Fn(Ipv4Addr) -> bool,
) -> u64 {
    let mut tables = match dp.tables() {
        Ok(t) => t,
        Err(e) => {
            warn!("Docker: cannot open the connection tables: {e:#}");
            return 0;
        }
    };
    let now = crate::table::timeouts::monotonic_ns();
    conntrack::remove_where(&mut tables, timeouts, now, |c| {
        pred(Ipv4Addr::from(c.original.src_addr.to_ne_bytes()))
    })
}
