//! The lab topology: "containers" behind a bridge in a host namespace that
//! has an uplink to a WAN namespace holding a remote server address.
//!
//! ```text
//!  [ns1 eth0 .2]--veth--+
//!                       +--[docker1 .1 | lab-host | ens5 203.0.113.2]--veth--[wan0 203.0.113.1 | lab-wan | lo 198.51.100.1]
//!  [ns2 eth0 .3]--veth--+
//! ```
//!
//! The WAN side deliberately has no route back to the container subnet, so
//! container traffic only gets answers once the host NATs it.
//!
//! Everything lives in namespaces named by the [`LabSpec`]; nothing outside
//! them is touched.

use std::{
    collections::HashSet,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::host::netns;

/// One "container": a namespace whose `ifname` is a veth to the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Namespace name.
    pub netns: String,
    /// Interface inside the container namespace (usually `eth0`).
    pub ifname: String,
    /// The veth end in the host namespace, enslaved to the bridge.
    pub host_veth: String,
    /// Address on `ifname`, inside the spec's container subnet.
    pub addr: Ipv4Addr,
    /// TX checksum offload on the container's interface. Turning it off makes
    /// the container emit fully checksummed packets (as a real NIC would),
    /// instead of veth's "checksum partial" ones.
    pub tx_checksum: bool,
}

impl ContainerSpec {
    /// A container with interface `eth0`, host end `veth-<netns>`, offloads on.
    pub fn new(netns: &str, addr: Ipv4Addr) -> Self {
        Self {
            netns: netns.to_owned(),
            ifname: "eth0".to_owned(),
            host_veth: format!("veth-{netns}"),
            addr,
            tx_checksum: true,
        }
    }
}

/// Every name and address of a lab, so tests can build a disjoint copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// The NAT host's namespace (bridge + uplink).
    pub host_netns: String,
    /// The WAN namespace (uplink peer + remote server).
    pub wan_netns: String,
    /// Bridge in the host namespace; also the containers' default gateway.
    pub bridge: String,
    /// Bridge address = containers' default gateway.
    pub bridge_addr: Ipv4Addr,
    /// Prefix length of the container subnet.
    pub subnet_prefix_len: u8,
    /// Host-side uplink interface (the NAT's egress).
    pub uplink: String,
    /// Address of the uplink (the NAT's public address).
    pub uplink_addr: Ipv4Addr,
    /// WAN-side end of the uplink veth; the host's default gateway.
    pub wan_iface: String,
    /// Address of `wan_iface`.
    pub wan_addr: Ipv4Addr,
    /// Prefix length of the uplink link subnet.
    pub uplink_prefix_len: u8,
    /// The remote server, a /32 on the WAN namespace's `lo`.
    pub remote_server: Ipv4Addr,
    pub containers: Vec<ContainerSpec>,
    /// IPv6 beside IPv4 (NAT66), if wanted.
    #[serde(default)]
    pub ipv6: Option<Ipv6Lab>,
}

/// The lab's IPv6: the bridge's address in its /64 (the containers get the following ones,
/// in order), the uplink's and its WAN peer's in their /64, and the remote server's (a /128
/// on the WAN namespace's `lo`, with no route back to the containers' /64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Lab {
    pub bridge_addr: Ipv6Addr,
    pub uplink_addr: Ipv6Addr,
    pub wan_addr: Ipv6Addr,
    pub remote_server: Ipv6Addr,
}

impl Ipv6Lab {
    /// The standard lab's: fd00:18::1/64 on the bridge, 2001:db8::2/64 on the uplink via
    /// 2001:db8::1, the remote 2001:db8:100::1.
    pub fn default_lab() -> Self {
        Self {
            bridge_addr: "fd00:18::1".parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
            uplink_addr: "2001:db8::2".parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
            wan_addr: "2001:db8::1".parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
            remote_server: "2001:db8:100::1".parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
        }
    }

    /// Container `i`'s address: the bridge's plus 1 + i.
    pub fn container_addr(&self, i: usize) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.bridge_addr) + 1 + i as u128)
    }
}

impl LabSpec {
    /// The standard lab: `ns1`/`ns2` on 172.18.0.0/24 behind `docker1` in
    /// `lab-host`, uplink `ens5` 203.0.113.2/24 to `lab-wan`'s `wan0`
    /// 203.0.113.1, remote server 198.51.100.1.
    pub fn default_lab() -> Self {
        Self {
            host_netns: "lab-host".to_owned(),
            wan_netns: "lab-wan".to_owned(),
            bridge: "docker1".to_owned(),
            bridge_addr: Ipv4Addr::new(172, 18, 0, 1),
            subnet_prefix_len: 24,
            uplink: "ens5".to_owned(),
            uplink_addr: Ipv4Addr::new(203, 0, 113, 2),
            wan_iface: "wan0".to_owned(),
            wan_addr: Ipv4Addr::new(203, 0, 113, 1),
            uplink_prefix_len: 24,
            remote_server: Ipv4Addr::new(198, 51, 100, 1),
            containers: vec![
                ContainerSpec::new("ns1", Ipv4Addr::new(172, 18, 0, 2)),
                ContainerSpec::new("ns2", Ipv4Addr::new(172, 18, 0, 3)),
            ],
            ipv6: Some(Ipv6Lab::default_lab()),
        }
    }

    /// The container subnet's network address.
    pub fn subnet(&self) -> Ipv4Addr {
        network_of(self.bridge_addr, self.subnet_prefix_len)
    }

    /// Every namespace of the lab: host, WAN, then containers.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut names = vec![self.host_netns.as_str(), self.wan_netns.as_str()];
        names.extend(
            self.containers
                .iter()
                .map(|container| container.netns.as_str()),
        );
        names
    }

    /// Rejects specs that would collide with themselves or make no sense,
    /// before anything is created.
    pub(crate) fn validate(&self) -> Result<()> {
        let mut seen_netns = HashSet::new();
        for name in self.namespaces() {
            netns::netns_path(name)?;
            if !seen_netns.insert(name) {
                bail!("namespace {name} appears twice in the lab spec");
            }
        }
        for (len, what) in [
            (self.subnet_prefix_len, "container subnet"),
            (self.uplink_prefix_len, "uplink subnet"),
        ] {
            if !(1..=30).contains(&len) {
                bail!("{what} prefix length /{len} must be within /1../30");
            }
        }

        let mut host_ifnames = HashSet::new();
        let host_side = [self.bridge.as_str(), self.uplink.as_str()]
            .into_iter()
            .chain(
                self.containers
                    .iter()
                    .map(|container| container.host_veth.as_str()),
            );
        for ifname in host_side {
            netns::validate_ifname(ifname)?;
            if ifname == "lo" || !host_ifnames.insert(ifname) {
                bail!(
                    "interface name {ifname} is used twice in {}",
                    self.host_netns
                );
            }
        }
        netns::validate_ifname(&self.wan_iface)?;
        if self.wan_iface == "lo" {
            bail!("the WAN interface cannot be lo");
        }

        let subnet = self.subnet();
        let mut seen_addrs = HashSet::from([self.bridge_addr]);
        for container in &self.containers {
            netns::validate_ifname(&container.ifname)?;
            if container.ifname == "lo" {
                bail!("container {} interface cannot be lo", container.netns);
            }
            if network_of(container.addr, self.subnet_prefix_len) != subnet {
                bail!(
                    "container {} address {} is outside {subnet}/{}",
                    container.netns,
                    container.addr,
                    self.subnet_prefix_len
                );
            }
            if !seen_addrs.insert(container.addr) {
                bail!(
                    "address {} is used twice in the container subnet",
                    container.addr
                );
            }
        }
        if network_of(self.uplink_addr, self.uplink_prefix_len)
            != network_of(self.wan_addr, self.uplink_prefix_len)
            || self.uplink_addr == self.wan_addr
        {
            bail!(
                "uplink {} and WAN {} must be distinct addresses in one /{} subnet",
                self.uplink_addr,
                self.wan_addr,
                self.uplink_prefix_len
            );
        }
        if network_of(self.remote_server, self.subnet_prefix_len) == subnet {
            bail!(
                "remote server {} must not be inside the container subnet",
                self.remote_server
            );
        }
        Ok(())
    }
}

/// The MAC for a lab interface with address `addr`: `02:42:` + the IPv4
/// address, as Docker does for containers. Deterministic MACs mean that an
/// interface rebuilt by a repair comes back with the MAC its neighbours have
/// cached, so nothing has to wait for ARP entries to go stale.
pub fn lab_mac(addr: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = addr.octets();
    [0x02, 0x42, a, b, c, d]
}

fn network_of(addr: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    Ipv4Addr::from(u32::from(addr) & mask)
}

/// Makes sure `ns_a/name_a` and `ns_b/name_b` exist as a veth pair. If only
/// one end is there (a namespace was recreated, or a build died half-way),
/// the leftover is deleted and the pair rebuilt.
///
/// Two existing ends are trusted to be each other's peer: lab interfaces are
/// only ever created in pairs, and deleting either end deletes both.
fn ensure_veth_pair(ns_a: &str, name_a: &str, ns_b: &str, name_b: &str) -> Result<()> {
    let a_present = netns::link_exists(ns_a, name_a)?;
    let b_present = netns::link_exists(ns_b, name_b)?;
    if a_present && b_present {
        return Ok(());
    }
    if a_present {
        log::info!("lab: {ns_a}/{name_a} has lost its peer, rebuilding the pair");
        netns::delete_link_in(ns_a, name_a)?;
    }
    if b_present {
        log::info!("lab: {ns_b}/{name_b} has lost its peer, rebuilding the pair");
        netns::delete_link_in(ns_b, name_b)?;
    }
    netns::create_veth_pair(ns_a, name_a, ns_b, name_b)
}

/// Brings the lab up, or repairs it to match `spec`. Idempotent: over a
/// complete lab it changes nothing; missing namespaces, interfaces,
/// addresses and routes are (re)created.
pub fn up(spec: &LabSpec) -> Result<()> {
    spec.validate()?;
    build(spec).context("bringing the lab up")
}

fn build(spec: &LabSpec) -> Result<()> {
    for name in spec.namespaces() {
        netns::create(name)?;
        if spec.ipv6.is_some() {
            // Before any interface is made: the lab's IPv6 addresses are its own, and
            // duplicate address detection would leave them (and the link-local ones
            // neighbour discovery uses) tentative for a second.
            netns::sysctl(name, "net/ipv6/conf/default/accept_dad", "0")?;
        }
        netns::with_netlink(name, |handle| async move {
            netns::set_link_up(&handle, "lo").await
        })?;
    }

    let (bridge, bridge_addr, prefix_len) = (
        spec.bridge.clone(),
        spec.bridge_addr,
        spec.subnet_prefix_len,
    );
    netns::with_netlink(&spec.host_netns, move |handle| async move {
        netns::ensure_bridge(&handle, &bridge).await?;
        netns::set_link_mac(&handle, &bridge, lab_mac(bridge_addr)).await?;
        netns::set_link_up(&handle, &bridge).await?;
        netns::add_address(&handle, &bridge, bridge_addr.into(), prefix_len).await
    })?;

    for container in &spec.containers {
        build_container(spec, container)
            .with_context(|| format!("setting up container namespace {}", container.netns))?;
    }

    ensure_veth_pair(
        &spec.host_netns,
        &spec.uplink,
        &spec.wan_netns,
        &spec.wan_iface,
    )?;
    let (uplink, uplink_addr, uplink_prefix_len, wan_addr) = (
        spec.uplink.clone(),
        spec.uplink_addr,
        spec.uplink_prefix_len,
        spec.wan_addr,
    );
    netns::with_netlink(&spec.host_netns, move |handle| async move {
        netns::set_link_mac(&handle, &uplink, lab_mac(uplink_addr)).await?;
        netns::set_link_up(&handle, &uplink).await?;
        netns::add_address(&handle, &uplink, uplink_addr.into(), uplink_prefix_len).await?;
        netns::replace_default_route_v4(&handle, wan_addr).await
    })?;
    netns::sysctl(&spec.host_netns, "net/ipv4/ip_forward", "1")?;

    // Only connected routes on the WAN side: no default route and nothing
    // towards the container subnet, so un-NATed replies go nowhere.
    let (wan_iface, remote_server) = (spec.wan_iface.clone(), spec.remote_server);
    netns::with_netlink(&spec.wan_netns, move |handle| async move {
        netns::set_link_mac(&handle, &wan_iface, lab_mac(wan_addr)).await?;
        netns::set_link_up(&handle, &wan_iface).await?;
        netns::add_address(&handle, &wan_iface, wan_addr.into(), uplink_prefix_len).await?;
        netns::add_address(&handle, "lo", remote_server.into(), 32).await
    })?;
    if let Some(v6) = &spec.ipv6 {
        build_ipv6(spec, v6)?;
    }
    Ok(())
}

/// The IPv6 half of the lab: addresses, default routes, forwarding; like IPv4's, no route on
/// the WAN side back to the containers' /64.
fn build_ipv6(spec: &LabSpec, v6: &Ipv6Lab) -> Result<()> {
    let (bridge, uplink, v6c) = (spec.bridge.clone(), spec.uplink.clone(), v6.clone());
    netns::with_netlink(&spec.host_netns, move |handle| async move {
        netns::add_address6_nodad(&handle, &bridge, v6c.bridge_addr, 64).await?;
        netns::add_address6_nodad(&handle, &uplink, v6c.uplink_addr, 64).await?;
        netns::replace_default_route_v6(&handle, v6c.wan_addr).await
    })?;
    netns::sysctl(&spec.host_netns, "net/ipv6/conf/all/forwarding", "1")?;
    let (wan_iface, v6c) = (spec.wan_iface.clone(), v6.clone());
    netns::with_netlink(&spec.wan_netns, move |handle| async move {
        netns::add_address6_nodad(&handle, &wan_iface, v6c.wan_addr, 64).await?;
        netns::add_address6_nodad(&handle, "lo", v6c.remote_server, 128).await
    })?;
    for (i, container) in spec.containers.iter().enumerate() {
        let (ifname, addr, gateway) = (
            container.ifname.clone(),
            v6.container_addr(i),
            v6.bridge_addr,
        );
        netns::with_netlink(&container.netns, move |handle| async move {
            netns::add_address6_nodad(&handle, &ifname, addr, 64).await?;
            netns::replace_default_route_v6(&handle, gateway).await
        })?;
    }
    Ok(())
}

fn build_container(spec: &LabSpec, container: &ContainerSpec) -> Result<()> {
    ensure_veth_pair(
        &spec.host_netns,
        &container.host_veth,
        &container.netns,
        &container.ifname,
    )?;

    let (bridge, host_veth) = (spec.bridge.clone(), container.host_veth.clone());
    netns::with_netlink(&spec.host_netns, move |handle| async move {
        netns::set_bridge_port(&handle, &host_veth, &bridge).await?;
        netns::set_link_up(&handle, &host_veth).await
    })?;

    let (ifname, addr, prefix_len, gateway) = (
        container.ifname.clone(),
        container.addr,
        spec.subnet_prefix_len,
        spec.bridge_addr,
    );
    netns::with_netlink(&container.netns, move |handle| async move {
        netns::set_link_mac(&handle, &ifname, lab_mac(addr)).await?;
        netns::set_link_up(&handle, &ifname).await?;
        netns::add_address(&handle, &ifname, addr.into(), prefix_len).await?;
        netns::replace_default_route_v4(&handle, gateway).await
    })?;

    // Applied every time so a recreated interface gets the setting back.
    netns::set_tx_checksum(&container.netns, &container.ifname, container.tx_checksum)
}

/// Removes every namespace of the lab (which destroys their interfaces).
/// Already gone is fine; all namespaces are attempted even if one fails.
pub fn down(spec: &LabSpec) -> Result<()> {
    let mut failures = Vec::new();
    // Containers first, mirroring how they hang off the host.
    let mut names = spec.namespaces();
    names.rotate_left(2);
    for name in names {
        if let Err(err) = netns::delete(name) {
            failures.push(format!("{err:#}"));
        }
    }
    if !failures.is_empty() {
        bail!("tearing the lab down: {}", failures.join("; "));
    }
    Ok(())
}

/// A short human-readable summary of the topology.
pub fn describe(spec: &LabSpec) -> String {
    let mut text = String::new();
    let subnet = format!("{}/{}", spec.subnet(), spec.subnet_prefix_len);
    // Writing to a String cannot fail.
    let _ = writeln!(text, "lab topology (container subnet {subnet}):");
    for container in &spec.containers {
        let _ = writeln!(
            text,
            "  netns {:<10} {} {}/{} default via {}{} (peer {} on {})",
            container.netns,
            container.ifname,
            container.addr,
            spec.subnet_prefix_len,
            spec.bridge_addr,
            if container.tx_checksum {
                ""
            } else {
                ", tx checksum off"
            },
            container.host_veth,
            spec.bridge,
        );
    }
    let _ = writeln!(
        text,
        "  netns {:<10} bridge {} {}/{}; uplink {} {}/{} default via {}; ip_forward=1",
        spec.host_netns,
        spec.bridge,
        spec.bridge_addr,
        spec.subnet_prefix_len,
        spec.uplink,
        spec.uplink_addr,
        spec.uplink_prefix_len,
        spec.wan_addr,
    );
    let _ = writeln!(
        text,
        "  netns {:<10} {} {}/{}; remote server {}/32 on lo; no route to {subnet}",
        spec.wan_netns, spec.wan_iface, spec.wan_addr, spec.uplink_prefix_len, spec.remote_server,
    );
    if let Some(v6) = &spec.ipv6 {
        let containers: Vec<String> = (0..spec.containers.len())
            .map(|i| format!("{}/64", v6.container_addr(i)))
            .collect();
        let _ = writeln!(
            text,
            "  IPv6: containers {} via {} on {}; uplink {}/64 via {}; remote {}/128, no route \
             back",
            containers.join(", "),
            v6.bridge_addr,
            spec.bridge,
            v6.uplink_addr,
            v6.wan_addr,
            v6.remote_server,
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lab_is_valid_and_described() {
        let spec = LabSpec::default_lab();
        spec.validate().unwrap();
        assert_eq!(spec.namespaces(), ["lab-host", "lab-wan", "ns1", "ns2"]);
        assert_eq!(spec.subnet(), Ipv4Addr::new(172, 18, 0, 0));
        let text = describe(&spec);
        for expected in [
            "172.18.0.0/24",
            "docker1 172.18.0.1/24",
            "ens5 203.0.113.2/24",
            "wan0 203.0.113.1/24",
            "198.51.100.1/32",
            "veth-ns1",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn validate_rejects_inconsistent_specs() {
        let mut spec = LabSpec::default_lab();
        spec.containers[1].netns = "ns1".to_owned();
        assert!(spec.validate().is_err(), "duplicate namespace");

        let mut spec = LabSpec::default_lab();
        spec.containers[0].addr = Ipv4Addr::new(10, 0, 0, 2);
        assert!(spec.validate().is_err(), "container outside the subnet");

        let mut spec = LabSpec::default_lab();
        spec.containers[0].host_veth = "veth-a-very-long-name".to_owned();
        assert!(spec.validate().is_err(), "interface name too long");

        let mut spec = LabSpec::default_lab();
        spec.containers[1].host_veth = spec.uplink.clone();
        assert!(spec.validate().is_err(), "host interface used twice");

        let mut spec = LabSpec::default_lab();
        spec.host_netns = "../etc".to_owned();
        assert!(spec.validate().is_err(), "namespace escaping /run/netns");

        let mut spec = LabSpec::default_lab();
        spec.wan_addr = Ipv4Addr::new(192, 0, 2, 1);
        assert!(spec.validate().is_err(), "uplink ends on different subnets");
    }

    #[test]
    fn network_of_masks_host_bits() {
        assert_eq!(
            network_of(Ipv4Addr::new(10, 99, 3, 77), 24),
            Ipv4Addr::new(10, 99, 3, 0)
        );
        assert_eq!(
            network_of(Ipv4Addr::new(10, 99, 3, 77), 1),
            Ipv4Addr::new(0, 0, 0, 0)
        );
        assert_eq!(
            network_of(Ipv4Addr::new(10, 99, 3, 77), 32),
            Ipv4Addr::new(10, 99, 3, 77)
        );
    }
}
