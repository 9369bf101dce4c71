//! `bpfnat`: command-line front end. One subcommand per object, like bpftool: this file holds
//! the clap types and the dispatch; each verb's work is in `bpfnat::cmd::<verb>`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use bpfnat::{
    bpf::instance, cmd, daemon::settings::UpFlags, host::netns, table::conntrack::Filter,
    util::addr::parse_proto,
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
    /// Instance whose pinned state to create or open (/sys/fs/bpf/bpfnat/NAME); default: the
    /// --netns name, else "default".
    #[arg(long, global = true, value_name = "NAME")]
    instance: Option<String>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the datapath to an uplink, serve the bridges (masquerade, forwarding, policy,
    /// published ports) until SIGINT/SIGTERM.
    Up(UpFlags),
    /// Ports published to containers (Docker's -p) on a running instance.
    Publish {
        #[command(subcommand)]
        verb: PublishVerb,
    },
    /// What a running instance serves: uplink, bridges and ports, published ports, attached
    /// programs, table occupancy.
    Status,
    /// The self-contained lab: namespaces standing in for containers, host and internet.
    Lab {
        #[command(subcommand)]
        verb: LabVerb,
    },
    /// The connection table of a running instance, like conntrack(8).
    Conntrack {
        #[command(subcommand)]
        verb: ConntrackVerb,
    },
    /// Stream one event per packet matching the filters (applied in the kernel): hook,
    /// tuple before and after translation, TCP flags, verdict and drop reason.
    Trace(TraceArgs),
    /// Remove the pinned state (maps and TCX links) of an instance that is not running, e.g.
    /// one left by `up --keep` or a killed daemon: its datapath stops.
    Down,
    /// Counters of a running instance and how full its connection table is.
    Stats {
        /// Print again every SECS seconds until interrupted.
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
    },
    /// What each program costs per packet on this kernel, path by path: the datapath is run
    /// on crafted frames (BPF_PROG_TEST_RUN) in a private topology of its own, with tracing
    /// off and on. Touches no running instance.
    Profile {
        /// Timed runs per case, each on a fresh frame.
        #[arg(long, value_name = "N", default_value_t = 20_000)]
        runs: u32,
    },
}

#[derive(clap::Args)]
struct TraceArgs {
    /// Source (before or after translation) in this network or address, IPv4 or IPv6, e.g.
    /// 172.18.0.0/24 or fd00:18::/64 (only packets of that IP version are traced).
    #[arg(long, value_name = "CIDR")]
    src: Option<String>,
    /// Destination (before or after translation) in this network or address, IPv4 or IPv6.
    #[arg(long, value_name = "CIDR")]
    dst: Option<String>,
    /// Either port (TCP/UDP) or ICMP echo identifier.
    #[arg(long)]
    port: Option<u16>,
    /// tcp, udp, icmp or a protocol number.
    #[arg(long)]
    proto: Option<String>,
    /// Also write the packets (their first 128 bytes, after the datapath's rewrite) to a pcap
    /// file for tcpdump -r or Wireshark.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Stop after N events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
}

#[derive(Subcommand)]
enum PublishVerb {
    /// Publish host ports: `[HOST_IP:]HOST_PORT[-END]:CONTAINER_IP:PORT[-END][/tcp|udp]`, or the
    /// host and container parts as two arguments. A host port that led elsewhere is
    /// re-targeted (its connections to the old target are removed).
    Add {
        #[arg(required = true, num_args = 1..=2, value_name = "SPEC")]
        spec: Vec<String>,
    },
    /// List the published ports.
    List,
    /// Unpublish host ports (the container part may be left out), and remove the
    /// connections made through them.
    Remove {
        #[arg(required = true, num_args = 1..=2, value_name = "SPEC")]
        spec: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConntrackVerb {
    /// List the mappings (original and reply tuple, accounting, seconds left).
    List(FilterArgs),
    /// Delete every mapping.
    Flush,
    /// Delete the mappings matching the filters (at least one).
    Delete(FilterArgs),
}

/// Criteria on the original tuple; all given ones must match.
#[derive(clap::Args)]
struct FilterArgs {
    /// tcp, udp, icmp or a protocol number.
    #[arg(long, short = 'p', value_name = "PROTO")]
    proto: Option<String>,
    /// Source address or CIDR, IPv4 or IPv6 (selects mappings of that version only).
    #[arg(long, short = 's', value_name = "CIDR")]
    src: Option<String>,
    /// Destination address or CIDR, IPv4 or IPv6.
    #[arg(long, short = 'd', value_name = "CIDR")]
    dst: Option<String>,
    /// Source port (ICMP: echo identifier).
    #[arg(long, value_name = "PORT")]
    sport: Option<u16>,
    /// Destination port.
    #[arg(long, value_name = "PORT")]
    dport: Option<u16>,
}

impl FilterArgs {
    fn filter(&self) -> anyhow::Result<Filter> {
        Ok(Filter {
            proto: self.proto.as_deref().map(parse_proto).transpose()?,
            src: self
                .src
                .as_deref()
                .map(bpfnat::table::conntrack::parse_net)
                .transpose()?,
            dst: self
                .dst
                .as_deref()
                .map(bpfnat::table::conntrack::parse_net)
                .transpose()?,
            sport: self.sport,
            dport: self.dport,
        })
    }
}

#[derive(Subcommand)]
enum LabVerb {
    /// Build (or repair) the lab topology.
    Up,
    /// Remove the lab topology.
    Down,
}

fn main() -> ExitCode {
    // netlink-packet-route warns about every link of a dump on kernels newer than it knows
    // (an attribute grew); the daemon lists links every second. RUST_LOG still overrides.
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .filter_module("netlink_packet_route", log::LevelFilter::Error)
        // Its connection warns about every link event still in flight when the daemon stops
        // listening, at shutdown.
        .filter_module("netlink_proto", log::LevelFilter::Error)
        .parse_env(env_logger::Env::default())
        .init();
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
    // Only the verbs on an instance use it (and fail on a bad name). Without --netns, the
    // name of the namespace we run in, so that `ip netns exec NAME bpfnat ...` and
    // `bpfnat --netns NAME ...` mean the same instance.
    let netns_name = cli.netns.clone().or_else(netns::current_name);
    let instance = instance::resolve_name(cli.instance.as_deref(), netns_name.as_deref());
    let json = cli.json;
    match cli.command {
        Command::Up(flags) => cmd::up::run(flags.settings(instance?)?),
        Command::Down => cmd::down::run(&instance?, json),
        Command::Status => cmd::status::run(&instance?, json),
        Command::Stats { watch } => cmd::stats::run(&instance?, json, watch),
        Command::Conntrack { verb } => {
            let action = match verb {
                ConntrackVerb::List(f) => cmd::conntrack::Action::List(f.filter()?),
                ConntrackVerb::Flush => cmd::conntrack::Action::Flush,
                ConntrackVerb::Delete(f) => cmd::conntrack::Action::Delete(f.filter()?),
            };
            cmd::conntrack::run(&instance?, json, &action)
        }
        Command::Publish { verb } => {
            let action = match verb {
                PublishVerb::Add { spec } => cmd::publish::Action::Add(spec),
                PublishVerb::Remove { spec } => cmd::publish::Action::Remove(spec),
                PublishVerb::List => cmd::publish::Action::List,
            };
            cmd::publish::run(&instance?, json, &action)
        }
        Command::Trace(args) => {
            let opts = cmd::trace::TraceOptions {
                src: args.src.as_deref().map(str::parse).transpose()?,
                dst: args.dst.as_deref().map(str::parse).transpose()?,
                port: args.port,
                proto: args.proto.as_deref().map(parse_proto).transpose()?,
                pcap: args.pcap,
                count: args.count,
                duration: args.duration.map(std::time::Duration::from_secs),
                json,
            };
            cmd::trace::command(&instance?, &opts)
        }
        Command::Profile { runs } => {
            cmd::profile::command(&cmd::profile::ProfileOptions { runs }, json)
        }
        Command::Lab { verb: LabVerb::Up } => cmd::lab::up(json),
        Command::Lab {
            verb: LabVerb::Down,
        } => cmd::lab::down(json),
    }
}
