//! Queries about the interfaces the datapath attaches to, in the current network namespace.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{anyhow, Context as _};
use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlag};

use crate::util::addr::Ipv4Net;

/// The interface index of `name`, or a one-line error naming the interface.
pub(crate) fn ifindex(name: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(name)
        .map_err(|_| anyhow!("unknown interface {name:?} (not found in this network namespace)"))
}

/// One IPv4 address of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InterfaceAddr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// The kernel marks all but the first address of a subnet as secondary.
    pub secondary: bool,
}

impl InterfaceAddr {
    pub(crate) fn network(&self) -> Ipv4Net {
        // prefix_len comes from the kernel and is always <= 32.
        Ipv4Net::new(self.addr, self.prefix_len.min(32)).unwrap_or(Ipv4Net {
            addr: self.addr,
            prefix_len: 32,
        })
    }
}

/// The IPv4 addresses of interface `name`, in the kernel's order.
pub(crate) async fn ipv4_addrs(
    handle: &rtnetlink::Handle,
    name: &str,
) -> anyhow::Result<Vec<InterfaceAddr>> {
    let index = ifindex(name)?;
    let mut stream = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .with_context(|| format!("reading addresses of {name}"))?
    {
        let secondary = msg.header.flags.contains(&AddressHeaderFlag::Secondary);
        // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on p2p links).
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let any = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if let Some(addr) = local.or(any) {
            out.push(InterfaceAddr {
                addr,
                prefix_len: msg.header.prefix_len,
                secondary,
            });
        }
    }
    Ok(out)
}

/// The global IPv6 addresses of interface `name` with their prefix lengths, in the kernel's
/// order: not link-local (fe80::/10), not deprecated or tentative (a usable source: the
/// uplink's external address).
pub(crate) async fn ipv6_global_addrs(
    handle: &rtnetlink::Handle,
    name: &str,
) -> anyhow::Result<Vec<(std::net::Ipv6Addr, u8)>> {
    ipv6_addrs(handle, name, true).await
}

/// The global IPv6 addresses assigned to interface `name`, tentative ones included: what a
/// bridge's networks and gateway are. Docker adds its bridge's address with duplicate address
/// detection, so for a second after the bridge appears its address is tentative, and the
/// gateway must not be missed for it.
pub(crate) async fn ipv6_assigned_addrs(
    handle: &rtnetlink::Handle,
    name: &str,
) -> anyhow::Result<Vec<(std::net::Ipv6Addr, u8)>> {
    ipv6_addrs(handle, name, false).await
}

async fn ipv6_addrs(
    handle: &rtnetlink::Handle,
    name: &str,
    usable_only: bool,
) -> anyhow::Result<Vec<(std::net::Ipv6Addr, u8)>> {
    let index = ifindex(name)?;
    let mut stream = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .with_context(|| format!("reading addresses of {name}"))?
    {
        let unusable = usable_only
            && msg.header.flags.iter().any(|f| {
                matches!(
                    f,
                    AddressHeaderFlag::Deprecated | AddressHeaderFlag::Tentative
                )
            });
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
            _ => None,
        });
        if let Some(addr) = addr {
            let link_local = addr.segments()[0] & 0xffc0 == 0xfe80;
            if !link_local && !unusable && !addr.is_loopback() {
                out.push((addr, msg.header.prefix_len));
            }
        }
    }
    Ok(out)
}

/// The address MASQUERADE would use: the interface's primary IPv4 address.
pub(crate) async fn primary_ipv4(
    handle: &rtnetlink::Handle,
    name: &str,
) -> anyhow::Result<Option<Ipv4Addr>> {
    let addrs = ipv4_addrs(handle, name).await?;
    Ok(addrs
        .iter()
        .find(|a| !a.secondary)
        .or(addrs.first())
        .map(|a| a.addr))
}

/// Open an rtnetlink connection in the current network namespace.
pub(crate) fn netlink() -> anyhow::Result<rtnetlink::Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Remove the clsact qdisc of `ifindex` (used when we added it for netlink-mode attachment).
pub(crate) async fn delete_clsact(handle: &rtnetlink::Handle, ifindex: u32) -> anyhow::Result<()> {
    use netlink_packet_route::tc::TcHandle;
    let mut req = handle.qdisc().del(ifindex as i32);
    let msg = req.message_mut();
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    req.execute().await.context("deleting the clsact qdisc")
}

/// Whether interface `ifindex` has a clsact qdisc (one we did not add must survive us).
pub(crate) async fn has_clsact(handle: &rtnetlink::Handle, ifindex: u32) -> anyhow::Result<bool> {
    use netlink_packet_route::tc::TcAttribute;
    let mut stream = handle.qdisc().get().execute();
    while let Some(msg) = stream.try_next().await.context("listing qdiscs")? {
        if msg.header.index == ifindex as i32
            && msg
                .attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(k) if k == "clsact"))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Set bridge port `index`'s isolation (`bridge link set dev PORT isolated on`): the kernel
/// bridge then forwards nothing from it to another isolated port, flooded broadcast and
/// multicast included, with or without the datapath (before its port program is attached,
/// while the loader is down). Only a `RTM_NEWLINK` carries a port's bridge options.
pub(crate) async fn set_port_isolated(
    handle: &rtnetlink::Handle,
    index: u32,
    isolated: bool,
) -> anyhow::Result<()> {
    use netlink_packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};
    use netlink_packet_route::{
        link::{InfoBridgePort, InfoPortData, InfoPortKind, LinkAttribute, LinkInfo, LinkMessage},
        RouteNetlinkMessage,
    };
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(
            isolated,
        )])),
    ]));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewLink(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut handle = handle.clone();
    let mut response = handle
        .request(req)
        .context("setting a bridge port's isolation")?;
    while let Some(msg) = response.next().await {
        if let netlink_packet_core::NetlinkPayload::Error(e) = msg.payload {
            if let Some(code) = e.code {
                return Err(std::io::Error::from_raw_os_error(-code.get()))
                    .context("setting a bridge port's isolation");
            }
        }
    }
    Ok(())
}

/// What the datapath needs to know of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    /// The bridge (or other master device) it is enslaved to.
    pub master: Option<u32>,
    /// Its hardware address, if it has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// A veth's peer (`IFLA_LINK`), as an ifindex in the peer's namespace.
    pub peer: Option<u32>,
    /// The id of the peer's namespace (`IFLA_LINK_NETNSID`), when it is another one.
    pub peer_netns: Option<i32>,
}

/// Every interface of the current network namespace, by rtnetlink (sysfs would show the
/// namespace it was mounted in, not the one `--netns` entered).
pub(crate) async fn links(handle: &rtnetlink::Handle) -> anyhow::Result<Vec<Link>> {
    use netlink_packet_route::link::LinkAttribute;
    let mut stream = handle.link().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = stream.try_next().await.context("listing interfaces")? {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            master: None,
            mac: None,
            peer: None,
            peer_netns: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Controller(m) if *m != 0 => link.master = Some(*m),
                LinkAttribute::Address(bytes) => {
                    link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok()
                }
                LinkAttribute::Link(peer) if *peer != 0 => link.peer = Some(*peer),
                LinkAttribute::NetnsId(id) if *id >= 0 => link.peer_netns = Some(*id),
                _ => {}
            }
        }
        out.push(link);
    }
    Ok(out)
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
