//! bpfnat: the userspace side of the eBPF NAT datapath.
//!
//! - [`datapath`]: load, configure and attach the eBPF programs; read their maps.
//! - [`up`]: the daemon behind `bpfnat up`.
//! - [`expiry`]: removal of idle mappings (userspace owns expiry).
//! - [`iface`], [`system`]: questions about the host (interfaces, addresses, root, bpffs).
//! - [`netns`], [`lab`]: named network namespaces and the self-contained lab topology.
//! - [`addr`]: parsing of CIDRs and port ranges.
//! - [`bridge`]: the bridges served and their ports; [`publish`]: published ports;
//!   [`status`]: what a running instance serves.
//! - [`packet`]: IPv4 frames built from scratch (tests and [`profile`], the per-program cost
//!   measurement with BPF_PROG_TEST_RUN).
//!
//! The modules are public for the `bpfnat` binary and the integration tests; inside them, an
//! item neither of those uses is `pub(crate)`, so the compiler's dead-code lint sees it.
pub mod addr;
pub mod bridge;
pub mod config;
pub mod conntrack;
pub mod datapath;
pub mod expiry;
pub mod iface;
pub mod instance;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod packet;
pub mod profile;
pub mod publish;
pub mod stats;
pub mod status;
pub mod system;
pub mod trace;
pub mod up;
