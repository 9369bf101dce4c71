//! bpfnat: the userspace side of the eBPF NAT datapath.
//!
//! The modules stand in layers; a module uses only modules of its own layer or of layers
//! below it, and no two modules import each other (see `docs/architecture.md`):
//!
//! | layer | what | modules |
//! |---|---|---|
//! | [`cmd`] | one module per CLI verb, like bpftool's `do_<verb>` | `up`, `down`, `status`, `stats`, `conntrack`, `publish`, `trace`, `profile`, `lab` |
//! | [`daemon`] | the running instance behind `bpfnat up` | `serve`, `settings`, `bridge`, `metrics` |
//! | [`table`] | the connection table and what it holds | `conntrack`, `expiry`, `timeouts`, `publish` |
//! | [`bpf`] | the loaded object, its maps and pins | `datapath`, `instance`, `stats` |
//! | [`host`] | the machine: namespaces, interfaces, privileges, the lab | `netns`, `iface`, `system`, `lab` |
//! | [`util`] | parsing and frames, no state | `addr`, `packet` |
//!
//! The modules are public for the `bpfnat` binary and the integration tests; inside them, an
//! item neither of those uses is `pub(crate)`, so the compiler's dead-code lint sees it.
pub mod bpf;
pub mod cmd;
pub mod daemon;
pub mod host;
pub mod table;
pub mod util;

#[cfg(test)]
mod layering;
