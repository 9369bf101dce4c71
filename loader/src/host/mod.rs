//! The machine the loader runs on. Uses [`crate::util`] only.
//!
//! - [`netns`]: named network namespaces (as `ip netns`), links, addresses and routes over
//!   rtnetlink, offloads over ethtool.
//! - [`iface`]: the interfaces the datapath attaches to (index, addresses, links).
//! - [`peer`]: the container's end of a bridge port (its MAC and addresses), in its namespace.
//! - [`system`]: privileges, bpffs, qdiscs.
//! - [`lab`]: the self-contained lab topology (containers, host, internet as namespaces).
pub mod iface;
pub mod lab;
pub mod netns;
pub mod peer;
pub mod system;
