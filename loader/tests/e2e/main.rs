//! End to end: the `bpfnat` binary and the library in network namespaces with real traffic,
//! a module per concern. Every test builds its own lab with its own names and addresses
//! (`support::topo::test_lab`), so tests run side by side; the heavy ones (`scale`,
//! `restart`) also take a lock so that they run one at a time.
//!
//! - [`nat`]: the lab and other topologies: ping, TCP, UDP, checksums, clsact mode;
//! - [`bridge`]: Docker's bridge semantics: FORWARD policy DROP, published ports, icc,
//!   isolation, internal bridges, ports that come and go, hairpin;
//! - [`icmp_frag`]: traceroute, path-MTU discovery, fragmented datagrams;
//! - [`scale`]: port ranges, 20,000 connections, flushes under traffic;
//! - [`restart`]: restart and upgrade without loss, `down`;
//! - [`conntrack_cli`]: `conntrack`, `stats`, expiry, address changes, the config file;
//! - [`ops`]: `trace`, the metrics endpoint, traffic counters;
//! - [`cli_errors`]: bad input, not root, bpffs missing, a second daemon;
//! - [`lab_topology`]: the lab builder;
//! - [`shared_host`]: a host shared with other tools (issue 13's items, by number);
//! - [`docker`]: `up --docker` following a real Docker daemon;
//! - [`ipv6`]: NAT66 masquerade (issue 15), and the IPv6 twins of the tests above.

#[path = "../support/mod.rs"]
mod support;

mod bridge;
mod cli_errors;
mod conntrack_cli;
mod docker;
mod host_sockets;
mod hostile;
mod icmp_frag;
mod ipv6;
mod lab_topology;
mod nat;
mod ops;
mod restart;
mod scale;
mod shared_host;
