//! `bpfnat`: command-line front end. One subcommand per object, like bpftool.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use bpfnat::{
    addr::{Ipv4Net, PortRange},
    datapath::TcMode,
    lab, netns, up,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bpfnat",
    version,
    about = "eBPF NAT datapath for container hosts: MASQUERADE without iptables"
)]
struct Cli {
    /// Run inside this named network namespace (as `ip netns exec NAME` would).
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the datapath to an uplink and masquerade the bridge's subnets until SIGINT/SIGTERM.
    Up(UpArgs),
    /// The self-contained lab: namespaces standing in for containers, host and internet.
    Lab {
        #[command(subcommand)]
        verb: LabVerb,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    /// Interface towards the outside (its primary IPv4 address becomes the source).
    #[arg(long, value_name = "IFACE")]
    uplink: String,
    /// Bridge the containers are attached to.
    #[arg(long, value_name = "BRIDGE")]
    bridge: String,
    /// Internal subnet to masquerade (repeatable); default: the bridge's IPv4 subnets.
    #[arg(long, value_name = "CIDR")]
    subnet: Vec<String>,
    /// External port range for TCP/UDP; default: MASQUERADE's classes (1-511, 600-1023, 1024-65535).
    #[arg(long, value_name = "LO-HI")]
    port_range: Option<String>,
    /// Entries in each connection-tracking map.
    #[arg(long, default_value_t = bpfnat_common::DEFAULT_TABLE_SIZE)]
    table_size: u32,
    /// How to attach to the uplink.
    #[arg(long, value_enum, default_value_t = TcMode::Auto)]
    tc_mode: TcMode,
    /// Idle timeout, NAME=SECONDS (repeatable), NAME as in nf_conntrack without its prefix:
    /// tcp_syn_sent, tcp_syn_recv, tcp_established, tcp_fin_wait, tcp_close_wait,
    /// tcp_last_ack, tcp_time_wait, tcp_close, udp_one_way, udp_both_ways, icmp, generic.
    /// Defaults are the kernel's.
    #[arg(long = "timeout", value_name = "NAME=SECONDS")]
    timeouts: Vec<String>,
    /// How often idle mappings are looked for, seconds.
    #[arg(long, default_value_t = 5)]
    sweep_interval: u64,
    /// Print a status line every second.
    #[arg(long)]
    status: bool,
}

#[derive(Subcommand)]
enum LabVerb {
    /// Build (or repair) the lab topology.
    Up,
    /// Remove the lab topology.
    Down,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpfnat: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(ns) = &cli.netns {
        // Before any thread exists, so the whole process (tokio workers included) lives there.
        netns::enter(ns).with_context(|| format!("entering network namespace {ns:?}"))?;
    }
    match cli.command {
        Command::Up(args) => {
            if args.sweep_interval == 0 {
                anyhow::bail!("--sweep-interval must be at least 1 second");
            }
            // Parsed here rather than by clap so a bad value gets our one-line error.
            let subnets = args
                .subnet
                .iter()
                .map(|s| s.parse::<Ipv4Net>())
                .collect::<anyhow::Result<Vec<_>>>()?;
            let port_range = args
                .port_range
                .as_deref()
                .map(str::parse::<PortRange>)
                .transpose()?;
            let opts = up::UpOptions {
                uplink: args.uplink,
                bridge: args.bridge,
                subnets,
                port_range,
                table_size: args.table_size,
                tc_mode: args.tc_mode,
                timeouts: bpfnat::config::parse_timeouts(&args.timeouts)?,
                sweep_interval: Duration::from_secs(args.sweep_interval),
                status: args.status,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(up::run(opts))
        }
        Command::Lab { verb } => {
            bpfnat::system::require_root()?;
            let spec = lab::LabSpec::default_lab();
            match verb {
                LabVerb::Up => {
                    lab::up(&spec)?;
                    if cli.json {
                        println!("{}", serde_json::json!({"lab": "up"}));
                    } else {
                        println!("{}", lab::describe(&spec));
                    }
                }
                LabVerb::Down => {
                    lab::down(&spec)?;
                    if cli.json {
                        println!("{}", serde_json::json!({"lab": "down"}));
                    } else {
                        println!("lab removed");
                    }
                }
            }
            Ok(())
        }
    }
}
