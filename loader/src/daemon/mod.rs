//! The running instance behind `bpfnat up`. Uses [`crate::table`] and below.
//!
//! - [`settings`]: flags and the TOML file merged into the one [`settings::Settings`] the
//!   daemon runs with.
//! - [`serve`]: start-up, the serve loop (address watch, port scan, sweeper, signals) and
//!   shutdown.
//! - [`bridge`]: the bridges served and their ports (attached and followed).
//! - [`docker`]: following a Docker daemon's networks, containers and published ports.
//! - [`docker_sync`]: applying what Docker reports to the datapath.
//! - [`metrics`]: the Prometheus endpoint.
pub mod bridge;
pub mod docker;
pub mod docker_sync;
pub mod metrics;
pub mod serve;
pub mod settings;
