//! The container's end of a bridge port. A container's address is whatever is configured on
//! its end of the veth, inside its own network namespace: a container cannot forge that (it
//! has no CAP_NET_ADMIN by default), while it can forge the source of any packet it sends
//! (raw sockets need only CAP_NET_RAW, which containers get). So the addresses a port may send
//! from are read there, not learned from its traffic.
//!
//! A port's peer is found among the network namespaces that have a name: those of `ip netns`
//! (`/run/netns`, where podman and CNI keep theirs too) and Docker's (`/run/docker/netns`).
//! Its namespace is the one whose id (in the port's namespace) the port reports as its
//! peer's (`IFLA_LINK_NETNSID`); the peer is the veth there whose peer is the port, and which
//! is the port's peer.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_route::{address::AddressAttribute, link::LinkAttribute};

use super::netns::{block_on_netlink, is_live_netns_mount, run_in_file};

/// Where named network namespaces are mounted.
pub(crate) const NAMESPACE_DIRS: [&str; 2] = ["/run/netns", "/run/docker/netns"];

/// At most this many namespaces are looked into per search (each costs a thread and a
/// netlink dump).
const MAX_NAMESPACES: usize = 4096;

/// The container's end of a port: its MAC, IPv4 addresses and global IPv6 addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub mac: [u8; 6],
    pub addrs: Vec<Ipv4Addr>,
    pub addrs6: Vec<std::net::Ipv6Addr>,
}

/// A port to find the peer of: its ifindex, its peer's (`IFLA_LINK`) and the id of the
/// peer's namespace (`IFLA_LINK_NETNSID`), as this namespace reports them. Interface indexes
/// repeat from one namespace to the next; the namespace id tells which one is the peer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PortRef {
    pub port: u32,
    pub peer: u32,
    pub peer_netns: i32,
}

/// The peers of `ports` that could be found, by port ifindex, among the named namespaces and
/// `more` (namespace files a container runtime reported, such as Docker's sandboxes under a
/// data root of its own). Blocking: the namespaces' ids are asked of the kernel
/// (`RTM_GETNSID`) from the calling thread's namespace, the one the ports are in, and only a
/// peer's namespace is entered.
pub(crate) fn find(ports: &[PortRef], more: &[PathBuf]) -> BTreeMap<u32, Peer> {
    let mut found = BTreeMap::new();
    if ports.is_empty() {
        return found;
    }
    let mut paths: Vec<PathBuf> = NAMESPACE_DIRS
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .chain(more.iter().cloned())
        .filter(|p| is_live_netns_mount(p))
        .collect();
    paths.sort();
    paths.dedup();
    paths.truncate(MAX_NAMESPACES);
    let ids = match namespace_ids(&paths) {
        Ok(ids) => ids,
        Err(e) => {
            log::debug!("reading namespace ids: {e:#}");
            return found;
        }
    };
    for (path, id) in paths.iter().zip(ids) {
        let here: Vec<PortRef> = ports
            .iter()
            .filter(|p| Some(p.peer_netns) == id)
            .copied()
            .collect();
        if here.is_empty() {
            continue;
        }
        match peers_in(path, &here) {
            Ok(peers) => found.extend(peers),
            // A namespace that went away meanwhile: nothing to find there.
            Err(e) => log::debug!("looking for port peers in {}: {e:#}", path.display()),
        }
    }
    found
}

/// The id the current namespace knows each namespace of `paths` by (None: none assigned,
/// so no interface here has its peer there, or the namespace is gone).
fn namespace_ids(paths: &[PathBuf]) -> anyhow::Result<Vec<Option<i32>>> {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
    use netlink_packet_route::{
        nsid::{NsidAttribute, NsidMessage},
        RouteNetlinkMessage,
    };
    block_on_netlink(|handle| async move {
        let mut ids = Vec::with_capacity(paths.len());
        for path in paths {
            let Ok(ns) = File::open(path) else {
                ids.push(None);
                continue;
            };
            let mut msg = NsidMessage::default();
            msg.attributes.push(NsidAttribute::Fd(
                std::os::fd::AsRawFd::as_raw_fd(&ns) as u32
            ));
            let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
            req.header.flags = NLM_F_REQUEST;
            let mut id = None;
            let mut response = handle.clone().request(req).context("RTM_GETNSID")?;
            while let Some(reply) = response.next().await {
                if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) = reply.payload
                {
                    id = m.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(i) if *i >= 0 => Some(*i),
                        _ => None,
                    });
                }
            }
            ids.push(id);
        }
        Ok(ids)
    })
}

/// The peers of `ports` inside the namespace mounted at `path`.
fn peers_in(path: &std::path::Path, ports: &[PortRef]) -> anyhow::Result<BTreeMap<u32, Peer>> {
    let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let ports = ports.to_vec();
    run_in_file(ns, "peer-lookup", move || {
        block_on_netlink(|handle| async move {
            let mut out = BTreeMap::new();
            let mut links = handle.link().get().execute();
            let mut candidates = Vec::new();
            while let Some(msg) = links.try_next().await.context("listing links")? {
                let (mut link, mut mac, mut other_ns) = (None, None, false);
                for attr in &msg.attributes {
                    match attr {
                        LinkAttribute::Link(l) => link = Some(*l),
                        LinkAttribute::NetnsId(_) => other_ns = true,
                        LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                        _ => {}
                    }
                }
                // The veth that is the peer of one of our ports while that port is its
                // peer (its other end lives in another namespace: ours).
                let Some(port) = ports
                    .iter()
                    .find(|p| Some(p.port) == link && p.peer == msg.header.index)
                else {
                    continue;
                };
                if let (true, Some(mac)) = (other_ns, mac) {
                    candidates.push((port.port, msg.header.index, mac));
                }
            }
            for (port, index, mac) in candidates {
                let mut addrs = Vec::new();
                let mut addrs6 = Vec::new();
                let mut stream = handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .execute();
                while let Some(msg) = stream.try_next().await.context("listing addresses")? {
                    if let Some(addr) = msg.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    }) {
                        addrs.push(addr);
                    }
                    // IPv6 has no IFA_LOCAL: its address is IFA_ADDRESS. Link-local ones
                    // stay on the link and are not checked.
                    if let Some(addr) = msg.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(IpAddr::V6(ip))
                            if ip.segments()[0] & 0xffc0 != 0xfe80 =>
                        {
                            Some(*ip)
                        }
                        _ => None,
                    }) {
                        addrs6.push(addr);
                    }
                }
                out.insert(port, Peer { mac, addrs, addrs6 });
            }
            Ok(out)
        })
    })
}
