//! bpfnat: the userspace side of the eBPF NAT datapath.
//!
//! - [`datapath`]: load, configure and attach the eBPF programs; read their maps.
//! - [`up`]: the daemon behind `bpfnat up`.
//! - [`expiry`]: removal of idle mappings (userspace owns expiry).
//! - [`iface`], [`system`]: questions about the host (interfaces, addresses, root, bpffs).
//! - [`netns`], [`lab`]: named network namespaces and the self-contained lab topology.
//! - [`addr`]: parsing of CIDRs and port ranges.
pub mod addr;
pub mod config;
pub mod conntrack;
pub mod datapath;
pub mod expiry;
pub mod iface;
pub mod instance;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod stats;
pub mod system;
pub mod trace;
pub mod up;
