//! The benchmark topology, built once per run and shared by every arm:
//!
//! ```text
//!  bnb-client                 bnb-host                                   bnb-wan
//!  eth0 10.90.0.2 ── veth ── bnb-br0 10.90.0.1 ─ routing ─ bnb-up 192.0.2.2 ── veth ── wan0 192.0.2.1
//!       fd00:90::2                   fd00:90::1              2001:db8::2             2001:db8::1
//!  (default via .1 / ::1)    (port bnb-port)                (default via 192.0.2.1 /  lo 198.51.100.90,
//!                                                            2001:db8::1)               2001:db8:100::90 (server)
//! ```
//!
//! Both families on the same links, so each arm is measured for IPv4 and IPv6 in one run.
//! Like the lab (`loader/src/lab.rs`), the WAN side has no route back to the client subnets:
//! only a NAT makes replies come back (the `routed` arm adds those routes for its run).
//! Everything uses documentation or private addresses and lives in namespaces named `bnb-*`;
//! nothing outside them is touched. Built with `ip` rather than `bpfnat::lab`: depending on the
//! loader crate would make xtask's own build need bpf-linker (the loader's build.rs builds the
//! eBPF object), which is what `xtask setup` installs on a fresh machine.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
};

use anyhow::{bail, Context as _};

use super::proc::in_ns;
use crate::{cmd, cmd_ok};

pub const CLIENT_NS: &str = "bnb-client";
pub const HOST_NS: &str = "bnb-host";
pub const WAN_NS: &str = "bnb-wan";
pub const NAMESPACES: [&str; 3] = [CLIENT_NS, HOST_NS, WAN_NS];

pub const BRIDGE: &str = "bnb-br0";
/// Host end of the client's veth, a port of the bridge.
pub const BRIDGE_PORT: &str = "bnb-port";
pub const UPLINK: &str = "bnb-up";
pub const WAN_IF: &str = "wan0";
pub const CLIENT_IF: &str = "eth0";

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 2);
pub const BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 1);
pub const SUBNET: &str = "10.90.0.0/24";
pub const UPLINK_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const WAN_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 90);

pub const CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x90, 0, 0, 0, 0, 0, 2);
pub const BRIDGE_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x90, 0, 0, 0, 0, 0, 1);
pub const SUBNET6: &str = "fd00:90::/64";
pub const UPLINK_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const WAN_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const SERVER_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x90);

/// The address family a workload runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn server(self) -> IpAddr {
        match self {
            Family::V4 => SERVER_ADDR.into(),
            Family::V6 => SERVER_ADDR6.into(),
        }
    }

    /// `ADDR:PORT` of the server, bracketed for IPv6.
    pub fn server_at(self, port: u16) -> String {
        std::net::SocketAddr::new(self.server(), port).to_string()
    }

    pub fn client(self) -> IpAddr {
        match self {
            Family::V4 => CLIENT_ADDR.into(),
            Family::V6 => CLIENT_ADDR6.into(),
        }
    }

    pub fn uplink(self) -> IpAddr {
        match self {
            Family::V4 => UPLINK_ADDR.into(),
            Family::V6 => UPLINK_ADDR6.into(),
        }
    }

    fn subnet(self) -> &'static str {
        match self {
            Family::V4 => SUBNET,
            Family::V6 => SUBNET6,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
}

/// bpfnat's pinned state for the host namespace (instance name = namespace name).
pub fn pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/bpfnat").join(HOST_NS)
}

/// Only one benchmark at a time: they would share namespace names.
pub struct RunLock {
    _file: fs::File,
}

impl RunLock {
    pub fn acquire() -> anyhow::Result<Self> {
        let path = "/run/bpfnat-bench.lock";
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {path}"))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => {
                bail!("another `cargo xtask bench` is running (it holds {path})")
            }
            Err(fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {path}")),
        }
    }
}

pub fn existing_namespaces() -> anyhow::Result<Vec<String>> {
    let list = cmd(Command::new("ip").args(["netns", "list"]))?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| NAMESPACES.contains(n))
        .map(str::to_owned)
        .collect())
}

/// The namespaces; removed when dropped, whatever happened.
pub struct Topology {
    _private: (),
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    cmd(Command::new("ip").args(args)).map(|_| ())
}

/// An IPv6 address, usable at once (no duplicate address detection).
fn addr6(ns: &str, addr: Ipv6Addr, len: u8, dev: &str) -> anyhow::Result<()> {
    ip(&[
        "-n",
        ns,
        "-6",
        "addr",
        "add",
        &format!("{addr}/{len}"),
        "dev",
        dev,
        "nodad",
    ])
}

fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    cmd(in_ns(ns, "sysctl").args(["-q", "-w", &format!("{key}={value}")])).map(|_| ())
}

impl Topology {
    pub fn create() -> anyhow::Result<Self> {
        // Left by a run that was killed (we hold the lock, so no other run owns them).
        for ns in existing_namespaces()? {
            eprintln!("bench: removing namespace {ns} left by an earlier run");
            delete_ns(&ns);
        }
        let topo = Topology { _private: () };
        for ns in NAMESPACES {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // Nothing on the links but our traffic and neighbour discovery: no duplicate
            // address detection (the addresses are usable at once), no router
            // solicitations or advertisements. Set on `default` before the links exist, so
            // that they inherit it.
            for conf in ["all", "default"] {
                for (key, value) in [
                    ("accept_dad", "0"),
                    ("accept_ra", "0"),
                    ("router_solicitations", "0"),
                ] {
                    sysctl(ns, &format!("net.ipv6.conf.{conf}.{key}"), value)?;
                }
            }
        }
        let (bridge_cidr, client_cidr, uplink_cidr, wan_cidr) = (
            format!("{BRIDGE_ADDR}/24"),
            format!("{CLIENT_ADDR}/24"),
            format!("{UPLINK_ADDR}/24"),
            format!("{WAN_ADDR}/24"),
        );
        // Host: bridge with the client's veth as its port.
        ip(&["-n", HOST_NS, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", HOST_NS, "addr", "add", &bridge_cidr, "dev", BRIDGE])?;
        ip(&["-n", HOST_NS, "link", "set", BRIDGE, "up"])?;
        addr6(HOST_NS, BRIDGE_ADDR6, 64, BRIDGE)?;
        ip(&[
            "-n",
            HOST_NS,
            "link",
            "add",
            BRIDGE_PORT,
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_IF,
            "netns",
            CLIENT_NS,
        ])?;
        ip(&[
            "-n",
            HOST_NS,
            "link",
            "set",
            BRIDGE_PORT,
            "master",
            BRIDGE,
            "up",
        ])?;
        // Client ("container").
        ip(&[
            "-n",
            CLIENT_NS,
            "addr",
            "add",
            &client_cidr,
            "dev",
            CLIENT_IF,
        ])?;
        addr6(CLIENT_NS, CLIENT_ADDR6, 64, CLIENT_IF)?;
        ip(&["-n", CLIENT_NS, "link", "set", CLIENT_IF, "up"])?;
        ip(&[
            "-n",
            CLIENT_NS,
            "route",
            "add",
            "default",
            "via",
            &BRIDGE_ADDR.to_string(),
        ])?;
        ip(&[
            "-n",
            CLIENT_NS,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &BRIDGE_ADDR6.to_string(),
        ])?;
        // Uplink to the WAN namespace.
        ip(&[
            "-n", HOST_NS, "link", "add", UPLINK, "type", "veth", "peer", "name", WAN_IF, "netns",
            WAN_NS,
        ])?;
        ip(&["-n", HOST_NS, "addr", "add", &uplink_cidr, "dev", UPLINK])?;
        addr6(HOST_NS, UPLINK_ADDR6, 64, UPLINK)?;
        ip(&["-n", HOST_NS, "link", "set", UPLINK, "up"])?;
        ip(&[
            "-n",
            HOST_NS,
            "route",
            "add",
            "default",
            "via",
            &WAN_ADDR.to_string(),
        ])?;
        ip(&[
            "-n",
            HOST_NS,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &WAN_ADDR6.to_string(),
        ])?;
        sysctl(HOST_NS, "net.ipv4.ip_forward", "1")?;
        sysctl(HOST_NS, "net.ipv6.conf.all.forwarding", "1")?;
        // WAN: the server address, connected routes only (no way back to the client subnet).
        ip(&["-n", WAN_NS, "addr", "add", &wan_cidr, "dev", WAN_IF])?;
        addr6(WAN_NS, WAN_ADDR6, 64, WAN_IF)?;
        ip(&["-n", WAN_NS, "link", "set", WAN_IF, "up"])?;
        ip(&[
            "-n",
            WAN_NS,
            "addr",
            "add",
            &format!("{SERVER_ADDR}/32"),
            "dev",
            "lo",
        ])?;
        addr6(WAN_NS, SERVER_ADDR6, 128, "lo")?;
        // Same ephemeral range everywhere, and room for the CRR server's TIME_WAIT sockets.
        sysctl(WAN_NS, "net.ipv4.tcp_max_tw_buckets", "262144")?;
        Ok(topo)
    }

    pub fn describe() -> String {
        format!(
            "{CLIENT_NS} {CLIENT_IF} {CLIENT_ADDR}/24 {CLIENT_ADDR6}/64 (default via \
             {BRIDGE_ADDR}, {BRIDGE_ADDR6}) -- veth -- {HOST_NS}: bridge {BRIDGE} \
             {BRIDGE_ADDR}/24 {BRIDGE_ADDR6}/64 (port {BRIDGE_PORT}), uplink {UPLINK} \
             {UPLINK_ADDR}/24 {UPLINK_ADDR6}/64 (default via {WAN_ADDR}, {WAN_ADDR6}), \
             forwarding on for both families -- veth -- {WAN_NS}: {WAN_IF} {WAN_ADDR}/24 \
             {WAN_ADDR6}/64, server {SERVER_ADDR}/32 and {SERVER_ADDR6}/128 on lo, no route \
             to {SUBNET} or {SUBNET6}"
        )
    }
}

fn delete_ns(ns: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(std::process::Stdio::null())
        .status();
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in NAMESPACES {
            delete_ns(ns);
        }
        match existing_namespaces() {
            Ok(left) if left.is_empty() => println!("bench: namespaces removed"),
            Ok(left) => eprintln!("bench: could not remove namespaces {left:?}"),
            Err(e) => eprintln!("bench: listing namespaces: {e:#}"),
        }
    }
}

/// Whether a route to a client subnet exists on the WAN side (only the routed arm's).
pub fn wan_has_return_route() -> bool {
    Family::ALL.into_iter().any(|f| {
        cmd(Command::new("ip").args(["-n", WAN_NS, f.flag(), "route", "show", f.subnet()]))
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false)
    })
}

pub fn add_return_route() -> anyhow::Result<()> {
    for f in Family::ALL {
        ip(&[
            "-n",
            WAN_NS,
            f.flag(),
            "route",
            "add",
            f.subnet(),
            "via",
            &f.uplink().to_string(),
        ])?;
    }
    Ok(())
}

pub fn del_return_route() {
    for f in Family::ALL {
        let _ =
            cmd_ok(Command::new("ip").args(["-n", WAN_NS, f.flag(), "route", "del", f.subnet()]));
    }
}
