//! Topology pieces shared by end-to-end tests.
#![allow(
    dead_code,
    reason = "each test binary includes the shared support and uses a part of it"
)]

use std::net::{Ipv4Addr, Ipv6Addr};

use bpfnat::host::netns;

/// A server namespace one routed hop behind `router_ns`, on a veth whose router side has TX
/// checksum offload off (so partial checksums get completed before the server sees them).
pub struct ServerBehindRouter {
    ns: String,
    router_ns: String,
}

impl ServerBehindRouter {
    pub const ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 130);
    pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 129);

    pub fn up(ns: &str, router_ns: &str) -> Self {
        netns::create(ns).unwrap();
        let guard = Self {
            ns: ns.into(),
            router_ns: router_ns.into(),
        };
        netns::create_veth_pair(router_ns, "to-srv", ns, "eth0").unwrap();
        let (gw, addr) = (Self::GATEWAY, Self::ADDR);
        netns::with_netlink(router_ns, move |h| async move {
            netns::add_address(&h, "to-srv", gw.into(), 30).await?;
            netns::set_link_up(&h, "to-srv").await
        })
        .unwrap();
        netns::with_netlink(ns, move |h| async move {
            netns::set_link_up(&h, "lo").await?;
            netns::add_address(&h, "eth0", addr.into(), 30).await?;
            netns::set_link_up(&h, "eth0").await?;
            netns::replace_default_route_v4(&h, gw).await
        })
        .unwrap();
        netns::sysctl(router_ns, "net/ipv4/ip_forward", "1").unwrap();
        netns::set_tx_checksum(router_ns, "to-srv", false).unwrap();
        netns::set_tx_checksum(ns, "eth0", false).unwrap();
        guard
    }
}

impl Drop for ServerBehindRouter {
    fn drop(&mut self) {
        let _ = netns::delete_link_in(&self.router_ns, "to-srv");
        let _ = netns::delete(&self.ns);
    }
}

impl ServerBehindRouter {
    pub const ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 2);
    pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 1);

    /// The server's namespace.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// IPv6 on the router-server link too: `GATEWAY6`/64 on the router (which forwards IPv6
    /// from then on), `ADDR6`/64 on the server with its default route via `GATEWAY6`. No
    /// duplicate address detection: usable at once.
    pub fn add_ipv6(&self) {
        let (gw, addr) = (Self::GATEWAY6, Self::ADDR6);
        netns::with_netlink(&self.router_ns, move |h| async move {
            netns::add_address6_nodad(&h, "to-srv", gw, 64).await
        })
        .unwrap();
        netns::with_netlink(&self.ns, move |h| async move {
            netns::add_address6_nodad(&h, "eth0", addr, 64).await?;
            netns::replace_default_route_v6(&h, gw).await
        })
        .unwrap();
        netns::sysctl(&self.router_ns, "net/ipv6/conf/all/forwarding", "1").unwrap();
    }

    /// Set the MTU of the router's side of the router-server link. The server keeps 1500 and
    /// so advertises a full-size MSS: the client's segments then only fit once path-MTU
    /// discovery has lowered its estimate (uploads only: the link drops big replies).
    pub fn set_router_mtu(&self, mtu: u32) {
        let mtu = mtu.to_string();
        let args = [
            "netns",
            "exec",
            &self.router_ns,
            "ip",
            "link",
            "set",
            "dev",
            "to-srv",
            "mtu",
            &mtu,
        ];
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip link set mtu")
            .success();
        assert!(ok, "setting mtu {mtu} on to-srv in {}", self.router_ns);
    }
}

/// A lab for one test: `containers` containers `<prefix>-c<i>` at `<net>.(1+i)`/24 (host ends
/// `<prefix>-v<i>`) behind bridge `br0` (gateway `<net>.1`) in `<prefix>-h`; uplink `up0` at
/// `uplink`/24 to `wan0` at `wan` in `<prefix>-w`, which holds the remote server `remote`.
/// Each test file picks its own `net` and addresses so files can run side by side.
pub fn test_lab(
    prefix: &str,
    net: [u8; 3],
    containers: u8,
    uplink: Ipv4Addr,
    wan: Ipv4Addr,
    remote: Ipv4Addr,
) -> bpfnat::host::lab::LabSpec {
    let [a, b, c] = net;
    let containers = (1..=containers)
        .map(|i| {
            let mut spec = bpfnat::host::lab::ContainerSpec::new(
                &format!("{prefix}-c{i}"),
                Ipv4Addr::new(a, b, c, 1 + i),
            );
            spec.host_veth = format!("{prefix}-v{i}");
            spec
        })
        .collect();
    bpfnat::host::lab::LabSpec {
        host_netns: format!("{prefix}-h"),
        wan_netns: format!("{prefix}-w"),
        bridge: "br0".into(),
        bridge_addr: Ipv4Addr::new(a, b, c, 1),
        subnet_prefix_len: 24,
        uplink: "up0".into(),
        uplink_addr: uplink,
        wan_iface: "wan0".into(),
        wan_addr: wan,
        uplink_prefix_len: 24,
        remote_server: remote,
        containers,
        ipv6: None,
    }
}
