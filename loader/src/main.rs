//! `bpfnat`: command-line front end. One subcommand per object, like bpftool.

use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use bpfnat::{
    config::{self, FileConfig, UpFlags},
    conntrack::{self, Filter},
    datapath::TcMode,
    expiry, instance, lab, netns,
    publish::{self, PublishSpec},
    stats::Stats,
    status, up,
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
    Up(UpArgs),
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
    /// Source (before or after translation) in this network, e.g. 172.18.0.0/24.
    #[arg(long, value_name = "CIDR")]
    src: Option<String>,
    /// Destination (before or after translation) in this network.
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
    /// Source address or CIDR.
    #[arg(long, short = 's', value_name = "CIDR")]
    src: Option<String>,
    /// Destination address or CIDR.
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
            proto: self
                .proto
                .as_deref()
                .map(bpfnat::addr::parse_proto)
                .transpose()?,
            src: self.src.as_deref().map(conntrack::parse_net).transpose()?,
            dst: self.dst.as_deref().map(conntrack::parse_net).transpose()?,
            sport: self.sport,
            dport: self.dport,
        })
    }
}

#[derive(clap::Args)]
struct UpArgs {
    /// Serve Prometheus metrics (the counters and table occupancy) on ADDR, e.g.
    /// 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// TOML file with any of: uplink, bridge, subnets, icc, publish, port_range, table_size,
    /// tc_mode, sweep_interval, [[bridges]] tables and a [timeouts] table. Flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Interface towards the outside (its primary IPv4 address becomes the source).
    /// Required unless the config file gives it.
    #[arg(long, value_name = "IFACE")]
    uplink: Option<String>,
    /// Bridge the containers are attached to (repeatable), with options:
    /// NAME:icc=false,internal,subnet=CIDR. Required unless the config file gives one.
    #[arg(long, value_name = "NAME[:OPTIONS]")]
    bridge: Vec<String>,
    /// Subnet of the (single) bridge (repeatable); default: the bridge's IPv4 networks.
    #[arg(long, value_name = "CIDR")]
    subnet: Vec<String>,
    /// Traffic between containers of a bridge, for bridges that do not say [default: true].
    #[arg(long, value_name = "BOOL", value_parser = parse_bool)]
    icc: Option<bool>,
    /// Publish a port, [HOST_IP:]HOST_PORT[-END]:CONTAINER_IP:PORT[-END][/tcp|udp] (repeatable).
    #[arg(long, value_name = "SPEC")]
    publish: Vec<String>,
    /// External port range for TCP/UDP; default: MASQUERADE's classes (1-511, 600-1023, 1024-65535).
    #[arg(long, value_name = "LO-HI")]
    port_range: Option<String>,
    /// Entries in each connection-tracking map [default: 262144].
    #[arg(long, value_name = "N")]
    table_size: Option<u32>,
    /// How to attach to the uplink [default: auto].
    #[arg(long, value_enum)]
    tc_mode: Option<TcMode>,
    /// Idle timeout, NAME=SECONDS (repeatable), NAME as in nf_conntrack without its prefix:
    /// tcp_syn_sent, tcp_syn_recv, tcp_established, tcp_fin_wait, tcp_close_wait,
    /// tcp_last_ack, tcp_time_wait, tcp_close, udp_one_way, udp_both_ways, icmp, generic.
    /// Defaults are the kernel's.
    #[arg(long = "timeout", value_name = "NAME=SECONDS")]
    timeouts: Vec<String>,
    /// How often idle mappings are looked for, seconds [default: 5].
    #[arg(long, value_name = "SECS")]
    sweep_interval: Option<u64>,
    /// Print a status line every second.
    #[arg(long)]
    status: bool,
    /// On SIGINT/SIGTERM leave the maps and TCX links pinned, so the datapath keeps
    /// translating (without expiry) until the next `up` adopts it or `bpfnat down`.
    #[arg(long)]
    keep: bool,
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
    // Only `up`, `conntrack` and `stats` use it (and fail on a bad name).
    let instance = instance_name(&cli);
    match cli.command {
        Command::Up(args) => {
            let instance = instance?;
            let file = args.config.as_deref().map(FileConfig::load).transpose()?;
            let settings = config::merge(
                UpFlags {
                    uplink: args.uplink,
                    bridges: args.bridge,
                    subnets: args.subnet,
                    icc: args.icc,
                    publish: args.publish,
                    port_range: args.port_range,
                    table_size: args.table_size,
                    tc_mode: args.tc_mode,
                    timeouts: args.timeouts,
                    sweep_interval: args.sweep_interval,
                },
                file,
            )?;
            let opts = up::UpOptions {
                uplink: settings.uplink,
                bridges: settings.bridges,
                publish: settings.publish,
                port_range: settings.port_range,
                table_size: settings.table_size,
                tc_mode: settings.tc_mode,
                timeouts: settings.timeouts,
                sweep_interval: settings.sweep_interval,
                status: args.status,
                instance,
                metrics: args.metrics,
                keep: args.keep,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(up::run(opts))
        }
        Command::Conntrack { ref verb } => conntrack_cmd(&cli, &instance?, verb),
        Command::Stats { watch } => stats_cmd(&cli, &instance?, watch),
        Command::Trace(ref args) => trace_cmd(&cli, &instance?, args),
        Command::Publish { ref verb } => publish_cmd(&cli, &instance?, verb),
        Command::Status => status::run(&instance?, cli.json),
        Command::Profile { runs } => {
            let results = bpfnat::profile::run(&bpfnat::profile::ProfileOptions { runs })?;
            if cli.json {
                print_json(&serde_json::to_value(&results)?);
            } else {
                print!("{}", bpfnat::profile::render(&results));
            }
            Ok(())
        }
        Command::Down => {
            bpfnat::system::require_root()?;
            let name = instance?;
            let dir = instance::down(&name)?;
            if cli.json {
                print_json(&serde_json::json!({"instance": name, "removed": dir}));
            } else {
                println!("removed instance {name:?} ({})", dir.display());
            }
            Ok(())
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

fn parse_bool(s: &str) -> Result<bool, String> {
    bpfnat::bridge::parse_bool(s).ok_or_else(|| format!("{s:?} is not true or false"))
}

fn publish_cmd(cli: &Cli, name: &str, verb: &PublishVerb) -> anyhow::Result<()> {
    // Parse before opening anything, so bad input fails the same way everywhere.
    let spec = match verb {
        PublishVerb::Add { spec } => {
            let s = PublishSpec::from_args(spec)?;
            if s.target.is_none() {
                anyhow::bail!(
                    "bad publish spec {:?}: no container address; expected {}",
                    spec.join(" "),
                    publish::SYNTAX
                );
            }
            Some(s)
        }
        PublishVerb::Remove { spec } => Some(PublishSpec::from_args(spec)?),
        PublishVerb::List => None,
    };
    let mut maps = instance::PinnedMaps::open(name)?;
    match (verb, spec) {
        (PublishVerb::Add { .. }, Some(spec)) => {
            maps.served()?.check(&spec)?;
            let (mut map, mut flows) = maps.publish_mut()?;
            let r = publish::add(&mut map, Some(&mut flows), &spec)?;
            if cli.json {
                print_json(&serde_json::json!({
                    "spec": spec.to_string(),
                    "added": r.added,
                    "changed": r.changed,
                    "unchanged": r.unchanged,
                    "connections_removed": r.connections_removed,
                }));
            } else if r.added + r.changed == 0 {
                println!("{spec}: already published");
            } else {
                let mut line = format!("published {spec}");
                if r.changed > 0 {
                    line.push_str(&format!(
                        " ({} host ports re-targeted, {} connections to the old target removed)",
                        r.changed, r.connections_removed
                    ));
                }
                println!("{line}");
            }
        }
        (PublishVerb::Remove { .. }, Some(spec)) => {
            let (mut map, mut flows) = maps.publish_mut()?;
            let r = publish::remove(&mut map, &mut flows, &spec)?;
            if cli.json {
                print_json(&serde_json::json!({
                    "spec": spec.to_string(),
                    "removed": r.removed,
                    "connections_removed": r.connections_removed,
                }));
            } else {
                println!(
                    "unpublished {spec} ({} host ports, {} connections removed)",
                    r.removed, r.connections_removed
                );
            }
        }
        _ => {
            let specs = PublishSpec::group(&maps.publishes()?);
            if cli.json {
                print_json(&serde_json::Value::Array(
                    specs.iter().map(PublishSpec::to_json).collect(),
                ));
            } else {
                let text: String = specs.iter().map(|s| format!("{s}\n")).collect();
                write_stdout(&text)?;
            }
        }
    }
    Ok(())
}

fn instance_name(cli: &Cli) -> anyhow::Result<String> {
    instance::resolve_name(cli.instance.as_deref(), cli.netns.as_deref())
}

fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

fn conntrack_cmd(cli: &Cli, name: &str, verb: &ConntrackVerb) -> anyhow::Result<()> {
    // Parse filters before opening anything, so bad input fails the same way everywhere.
    let filter = match verb {
        ConntrackVerb::List(f) | ConntrackVerb::Delete(f) => f.filter()?,
        ConntrackVerb::Flush => Filter::default(),
    };
    if matches!(verb, ConntrackVerb::Delete(_)) && filter.is_empty() {
        anyhow::bail!(
            "conntrack delete needs at least one filter (--proto, --src, --dst, --sport, --dport); \
             `conntrack flush` deletes everything"
        );
    }
    let mut maps = instance::PinnedMaps::open(name)?;
    let timeouts = maps.config()?.timeouts;
    let mut tables = maps.tables()?;
    let now = expiry::monotonic_ns();
    match verb {
        ConntrackVerb::List(_) => {
            let conns: Vec<_> = conntrack::list(&tables, &timeouts, now)
                .into_iter()
                .filter(|c| filter.matches(c))
                .collect();
            if cli.json {
                print_json(&serde_json::Value::Array(
                    conns.iter().map(conntrack::Connection::to_json).collect(),
                ));
            } else {
                let mut text = String::new();
                for c in &conns {
                    text.push_str(&c.line());
                    text.push('\n');
                }
                if !write_stdout(&text)? {
                    return Ok(());
                }
                eprintln!(
                    "bpfnat conntrack ({name}): {} flow entries have been shown.",
                    conns.len()
                );
            }
        }
        ConntrackVerb::Flush => {
            let report = conntrack::flush(&mut tables, &timeouts, now);
            if cli.json {
                print_json(&serde_json::json!({
                    "flushed": report.mappings,
                    "orphan_halves": report.orphans,
                }));
            } else {
                println!(
                    "bpfnat conntrack ({name}): {} flow entries have been deleted.",
                    report.mappings
                );
            }
        }
        ConntrackVerb::Delete(_) => {
            let n = conntrack::delete(&mut tables, &timeouts, now, &filter)?;
            if cli.json {
                print_json(&serde_json::json!({ "deleted": n }));
            } else {
                println!("bpfnat conntrack ({name}): {n} flow entries have been deleted.");
            }
        }
    }
    Ok(())
}

fn trace_cmd(cli: &Cli, name: &str, args: &TraceArgs) -> anyhow::Result<()> {
    bpfnat::system::require_root()?;
    let opts = bpfnat::trace::TraceOptions {
        src: args.src.as_deref().map(str::parse).transpose()?,
        dst: args.dst.as_deref().map(str::parse).transpose()?,
        port: args.port,
        proto: args
            .proto
            .as_deref()
            .map(bpfnat::addr::parse_proto)
            .transpose()?,
        pcap: args.pcap.clone(),
        count: args.count,
        duration: args.duration.map(std::time::Duration::from_secs),
        json: cli.json,
    };
    bpfnat::trace::validate(&opts)?;
    let dir = instance::require_running(name)?;
    let events = bpfnat::trace::run(&dir, &opts, &mut std::io::stdout().lock())?;
    eprintln!("bpfnat trace ({name}): {events} events");
    Ok(())
}

fn stats_cmd(cli: &Cli, name: &str, watch: Option<u64>) -> anyhow::Result<()> {
    if watch == Some(0) {
        anyhow::bail!("--watch must be at least 1 second");
    }
    let maps = instance::PinnedMaps::open(name)?;
    loop {
        let stats = Stats::read(&maps)?;
        let mut text = if cli.json {
            format!("{}\n", stats.to_json())
        } else {
            stats.text()
        };
        if watch.is_some() && !cli.json {
            text.push('\n');
        }
        // The reader went away (`| head`): done.
        if !write_stdout(&text)? {
            return Ok(());
        }
        let Some(secs) = watch else { return Ok(()) };
        std::thread::sleep(Duration::from_secs(secs));
        // The maps stay readable through our descriptors after the daemon exits; stop then.
        if !matches!(
            instance::status_of(&instance::dir(name))?,
            instance::Status::Running(_)
        ) {
            anyhow::bail!("instance {name:?} stopped");
        }
    }
}

/// Write to stdout and flush; Ok(false) if the reader has gone (broken pipe).
fn write_stdout(text: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}
