//! The container's end of a bridge port. A container's address is whatever is configured on
//! its end of the veth, inside its own network namespace: a container cannot forge that (it
//! has no CAP_NET_ADMIN by default), while it can forge the source of any packet it sends
//! (raw sockets need only CAP_NET_RAW, which containers get). So the addresses a port may send
//! from are read there, not learned from its traffic.
//!
//! A port's peer is found by looking into the network namespaces that have a name: those of
//! `ip netns` (`/run/netns`, where podman and CNI keep theirs too) and Docker's
//! (`/run/docker/netns`). The peer is the veth there whose peer is the port, and which is the
//! port's peer.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use netlink_packet_route::{address::AddressAttribute, link::LinkAttribute};
use nix::sched::{setns, CloneFlags};

use super::netns::is_live_netns_mount;

/// Where named network namespaces are mounted.
pub(crate) const NAMESPACE_DIRS: [&str; 2] = ["/run/netns", "/run/docker/netns"];

/// At most this many namespaces are looked into per search (each costs a thread and a
/// netlink dump).
const MAX_NAMESPACES: usize = 4096;

/// The container's end of a port: its MAC and IPv4 addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub mac: [u8; 6],
    pub addrs: Vec<Ipv4Addr>,
}

/// A port to find the peer of: its ifindex and its peer's (`IFLA_LINK`), both as this
/// namespace reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PortRef {
    pub port: u32,
    pub peer: u32,
}

/// The peers of `ports` that could be found, by port ifindex. Blocking.
pub(crate) fn find(ports: &[PortRef]) -> BTreeMap<u32, Peer> {
    let mut found = BTreeMap::new();
    if ports.is_empty() {
        return found;
    }
    let paths: Vec<PathBuf> = NAMESPACE_DIRS
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|p| is_live_netns_mount(p))
        .take(MAX_NAMESPACES)
        .collect();
    for path in paths {
        match peers_in(&path, ports) {
            Ok(peers) => found.extend(peers),
            // A namespace that went away meanwhile, or one we may not enter: not ours.
            Err(e) => log::debug!("looking for port peers in {}: {e:#}", path.display()),
        }
        if found.len() == ports.len() {
            break;
        }
    }
    found
}

/// The peers of `ports` inside the namespace mounted at `path`.
fn peers_in(path: &std::path::Path, ports: &[PortRef]) -> anyhow::Result<BTreeMap<u32, Peer>> {
    let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let ports = ports.to_vec();
    std::thread::Builder::new()
        .name("peer-lookup".into())
        .spawn(move || -> anyhow::Result<BTreeMap<u32, Peer>> {
            setns(&ns, CloneFlags::CLONE_NEWNET).context("setns")?;
            drop(ns);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a tokio runtime")?;
            runtime.block_on(async move {
                let (connection, handle, _) =
                    rtnetlink::new_connection().context("opening an rtnetlink socket")?;
                tokio::spawn(connection);
                let mut out = BTreeMap::new();
                let mut links = handle.link().get().execute();
                let mut candidates = Vec::new();
                while let Some(msg) = links.try_next().await.context("listing links")? {
                    let (mut link, mut mac, mut other_ns) = (None, None, false);
                    for attr in &msg.attributes {
                        match attr {
                            LinkAttribute::Link(l) => link = Some(*l),
                            LinkAttribute::NetnsId(_) => other_ns = true,
                            LinkAttribute::Address(a) => {
                                mac = <[u8; 6]>::try_from(a.as_slice()).ok()
                            }
                            _ => {}
                        }
                    }
                    // A veth whose other end lives in another namespace, and which is the
                    // peer of one of our ports while that port is its peer.
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
                    }
                    out.insert(port, Peer { mac, addrs });
                }
                Ok(out)
            })
        })
        .context("spawning a thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the lookup thread panicked"))?
}
