//! Configuration of `bpfnat up`: command-line values and the `--config FILE.toml` file.
//!
//! The file holds the same settings as the flags (flags win):
//!
//! ```toml
//! uplink = "ens5"
//! bridge = "docker1"              # one bridge, or [[bridges]] tables (or both)
//! subnets = ["172.18.0.0/24"]     # the single bridge's subnets (default: its networks)
//! icc = true                      # default of every bridge
//! publish = ["8080:172.18.0.2:80/tcp"]
//! port_range = "20000-29999"
//! table_size = 65536
//! tc_mode = "auto"
//! sweep_interval = 5
//! docker = true                   # follow the Docker daemon's networks, containers, -p
//! docker_host = "unix:///var/run/docker.sock"
//!
//! [[bridges]]
//! name = "br-backend"
//! icc = false
//! internal = true
//! subnets = ["10.91.0.0/24"]
//!
//! [timeouts]
//! udp_one_way = 30
//! tcp_established = 7440
//! ```

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{anyhow, bail, Context as _};
use bpfnat_common::Timeouts;
use clap::ValueEnum as _;
use serde::Deserialize;

use crate::{
    bpf::datapath::TcMode,
    daemon::bridge::BridgeSpec,
    table::{publish::PublishSpec, publish6::Publish6Spec},
    util::addr::{Ipv4Net, PortRange},
};

/// Timeout names accepted by `--timeout NAME=SECONDS`, with their field.
pub(crate) const TIMEOUT_NAMES: [&str; 13] = [
    "tcp_syn_sent",
    "tcp_syn_recv",
    "tcp_established",
    "tcp_fin_wait",
    "tcp_close_wait",
    "tcp_last_ack",
    "tcp_time_wait",
    "tcp_close",
    "udp_one_way",
    "udp_both_ways",
    "icmp",
    "generic",
    "tcp_unacknowledged",
];

fn timeout_field<'a>(t: &'a mut Timeouts, name: &str) -> Option<&'a mut u32> {
    Some(match name {
        "tcp_syn_sent" => &mut t.tcp_syn_sent,
        "tcp_syn_recv" => &mut t.tcp_syn_recv,
        "tcp_established" => &mut t.tcp_established,
        "tcp_fin_wait" => &mut t.tcp_fin_wait,
        "tcp_close_wait" => &mut t.tcp_close_wait,
        "tcp_last_ack" => &mut t.tcp_last_ack,
        "tcp_time_wait" => &mut t.tcp_time_wait,
        "tcp_close" => &mut t.tcp_close,
        "udp_one_way" => &mut t.udp_one_way,
        "udp_both_ways" => &mut t.udp_both_ways,
        "icmp" => &mut t.icmp,
        "generic" => &mut t.generic,
        "tcp_unacknowledged" => &mut t.tcp_unacknowledged,
        _ => return None,
    })
}

/// Set one timeout by name.
pub(crate) fn set_timeout(t: &mut Timeouts, name: &str, secs: u32) -> anyhow::Result<()> {
    if secs == 0 {
        bail!("timeout {name} must be at least 1 second");
    }
    let field = timeout_field(t, name).ok_or_else(|| {
        anyhow!(
            "unknown timeout {name:?}; known: {}",
            TIMEOUT_NAMES.join(", ")
        )
    })?;
    *field = secs;
    Ok(())
}

/// Apply one `NAME=SECONDS` item.
fn apply_timeout_item(t: &mut Timeouts, item: &str) -> anyhow::Result<()> {
    let (name, secs) = item.split_once('=').ok_or_else(|| {
        anyhow!("bad timeout {item:?}: expected NAME=SECONDS, e.g. udp_one_way=30")
    })?;
    let secs: u32 = secs
        .trim()
        .parse()
        .map_err(|_| anyhow!("bad timeout {item:?}: {secs:?} is not a number of seconds"))?;
    set_timeout(t, name.trim(), secs)
}

/// Default of `sweep_interval`, seconds.
pub(crate) const DEFAULT_SWEEP_INTERVAL: u64 = 5;

/// The contents of a `--config` file. Every key is optional; unknown keys are an error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub uplink: Option<String>,
    /// One bridge, by name.
    pub bridge: Option<String>,
    /// Bridges with options (`[[bridges]]`).
    pub bridges: Option<Vec<FileBridge>>,
    /// Subnets of the single bridge.
    pub subnets: Option<Vec<String>>,
    /// Inter-container traffic on every bridge that does not say otherwise.
    pub icc: Option<bool>,
    /// Published ports, `[HOST_IP:]HOST_PORT[-END]:CONTAINER_IP:PORT[-END][/tcp|udp]`.
    pub publish: Option<Vec<String>>,
    /// "LO-HI".
    pub port_range: Option<String>,
    pub table_size: Option<u32>,
    /// "auto", "tcx" or "clsact".
    pub tc_mode: Option<String>,
    /// Seconds.
    pub sweep_interval: Option<u64>,
    /// NAME = SECONDS, names of [`TIMEOUT_NAMES`].
    pub timeouts: Option<BTreeMap<String, u32>>,
    /// Follow the Docker daemon.
    pub docker: Option<bool>,
    /// Its API address (implies `docker`).
    pub docker_host: Option<String>,
}

/// A `[[bridges]]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBridge {
    pub name: String,
    pub icc: Option<bool>,
    pub internal: Option<bool>,
    pub masquerade: Option<bool>,
    pub subnets: Option<Vec<String>>,
}

impl FileBridge {
    fn spec(&self) -> anyhow::Result<BridgeSpec> {
        Ok(BridgeSpec {
            name: self.name.clone(),
            icc: self.icc,
            internal: self.internal.unwrap_or(false),
            masquerade: self.masquerade.unwrap_or(true),
            subnets: parse_subnets(self.subnets.as_deref().unwrap_or_default())
                .with_context(|| format!("bridge {:?} of the config file", self.name))?,
            subnets6: Vec::new(),
        })
    }
}

fn parse_subnets(items: &[String]) -> anyhow::Result<Vec<Ipv4Net>> {
    items.iter().map(|s| s.parse::<Ipv4Net>()).collect()
}

impl FileConfig {
    /// Parse TOML text; errors are one line naming `origin` and the line.
    pub(crate) fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|r| {
                    format!(
                        ", line {}",
                        text[..r.start.min(text.len())].matches('\n').count() + 1
                    )
                })
                .unwrap_or_default();
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            anyhow!("config file {origin}{line}: {message}")
        })
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }
}

/// `bpfnat up`'s command line: every setting the config file can also give (None or empty =
/// not given), and the ones only a command line gives.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct UpFlags {
    /// Serve Prometheus metrics (the counters and table occupancy) on ADDR, e.g.
    /// 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// TOML file with any of: uplink, bridge, subnets, icc, publish, port_range, table_size,
    /// tc_mode, sweep_interval, [[bridges]] tables and a [timeouts] table. Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Interface towards the outside (its primary IPv4 address becomes the source).
    /// Required unless the config file gives it.
    #[arg(long, value_name = "IFACE")]
    pub uplink: Option<String>,
    /// Bridge the containers are attached to (repeatable), with options:
    /// NAME:icc=false,internal,masquerade=false,subnet=CIDR. Required unless the config file
    /// gives one, or --docker.
    #[arg(long = "bridge", value_name = "NAME[:OPTIONS]")]
    pub bridges: Vec<String>,
    /// Follow the Docker daemon: serve its bridge networks (created and removed at run time,
    /// with their icc, internal and masquerade options), its containers' addresses and
    /// their published ports (`docker run -p`). Combines with --bridge for bridges Docker
    /// does not manage.
    #[arg(long)]
    pub docker: bool,
    /// The Docker daemon's API address (implies --docker) [default: $DOCKER_HOST, else
    /// unix:///var/run/docker.sock].
    #[arg(long, value_name = "URL")]
    pub docker_host: Option<String>,
    /// Subnet of the (single) bridge (repeatable); default: the bridge's IPv4 networks.
    #[arg(long = "subnet", value_name = "CIDR")]
    pub subnets: Vec<String>,
    /// Traffic between containers of a bridge, for bridges that do not say [default: true].
    #[arg(long, value_name = "BOOL", value_parser = parse_bool_arg)]
    pub icc: Option<bool>,
    /// Publish a port, [HOST_IP:]HOST_PORT[-END]:CONTAINER_IP:PORT[-END][/tcp|udp], or on the
    /// uplink's IPv6 address HOST_PORT[-END]:[CONTAINER_IPV6]:PORT[-END][/tcp|udp]
    /// (repeatable).
    #[arg(long, value_name = "SPEC")]
    pub publish: Vec<String>,
    /// External port range for TCP/UDP; default: MASQUERADE's classes (1-511, 600-1023,
    /// 1024-65535).
    #[arg(long, value_name = "LO-HI")]
    pub port_range: Option<String>,
    /// Entries in each connection-tracking map [default: 262144].
    #[arg(long, value_name = "N")]
    pub table_size: Option<u32>,
    /// How to attach to the uplink [default: auto].
    #[arg(long, value_enum)]
    pub tc_mode: Option<TcMode>,
    /// Idle timeout, NAME=SECONDS (repeatable), NAME as in nf_conntrack without its prefix:
    /// tcp_syn_sent, tcp_syn_recv, tcp_established, tcp_fin_wait, tcp_close_wait,
    /// tcp_last_ack, tcp_time_wait, tcp_close, udp_one_way, udp_both_ways, icmp, generic.
    /// Defaults are the kernel's.
    #[arg(long = "timeout", value_name = "NAME=SECONDS")]
    pub timeouts: Vec<String>,
    /// How often idle mappings are looked for, seconds [default: 5].
    #[arg(long, value_name = "SECS")]
    pub sweep_interval: Option<u64>,
    /// Print a status line every second.
    #[arg(long)]
    pub status: bool,
    /// On SIGINT/SIGTERM leave the maps and TCX links pinned, so the datapath keeps
    /// translating (without expiry) until the next `up` adopts it or `bpfnat down`.
    #[arg(long)]
    pub keep: bool,
}

fn parse_bool_arg(s: &str) -> Result<bool, String> {
    crate::daemon::bridge::parse_bool(s).ok_or_else(|| format!("{s:?} is not true or false"))
}

/// The settings `bpfnat up` runs with: flags over the file over the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub uplink: String,
    /// At least one; `icc` filled in from the global setting.
    pub bridges: Vec<BridgeSpec>,
    /// Ports published from the start.
    pub publish: Vec<PublishSpec>,
    /// Ports published on the uplink's IPv6 address from the start.
    pub publish6: Vec<Publish6Spec>,
    pub port_range: Option<PortRange>,
    pub table_size: u32,
    pub tc_mode: TcMode,
    pub timeouts: Timeouts,
    pub sweep_interval: Duration,
    /// Name of the pinned state directory (`/sys/fs/bpf/bpfnat/<instance>/`).
    pub instance: String,
    /// Print a status line every second.
    pub status: bool,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<std::net::SocketAddr>,
    /// On SIGINT/SIGTERM leave the maps and TCX links pinned: the datapath keeps running
    /// (without expiry) until the next `up` adopts it or `bpfnat down` removes it.
    pub keep: bool,
    /// Follow the Docker daemon at this API address.
    pub docker: Option<String>,
}

impl UpFlags {
    /// These flags over the `--config` file they name (if any), for instance `instance`.
    pub fn settings(self, instance: String) -> anyhow::Result<Settings> {
        let file = self.config.as_deref().map(FileConfig::load).transpose()?;
        merge(self, file, instance)
    }
}

/// Merge command-line flags over the config file (if any). Timeouts merge name by name.
pub(crate) fn merge(
    flags: UpFlags,
    file: Option<FileConfig>,
    instance: String,
) -> anyhow::Result<Settings> {
    let file = file.unwrap_or_default();
    let uplink = flags.uplink.or(file.uplink).ok_or_else(|| {
        anyhow!("no uplink: give --uplink IFACE or `uplink` in the --config file")
    })?;
    let mut bridges = if flags.bridges.is_empty() {
        let mut b: Vec<BridgeSpec> = file.bridge.iter().map(|n| BridgeSpec::new(n)).collect();
        for fb in file.bridges.as_deref().unwrap_or_default() {
            b.push(fb.spec()?);
        }
        b
    } else {
        flags
            .bridges
            .iter()
            .map(|s| s.parse::<BridgeSpec>())
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let docker = if flags.docker_host.is_some() || flags.docker || file.docker == Some(true) {
        Some(
            flags
                .docker_host
                .or(file.docker_host)
                .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
                .unwrap_or_else(|| crate::daemon::docker::DEFAULT_HOST.to_owned()),
        )
    } else if file.docker_host.is_some() && file.docker != Some(false) {
        file.docker_host
    } else {
        None
    };
    if let Some(url) = &docker {
        crate::daemon::docker::check_host(url)?;
    }
    if bridges.is_empty() && docker.is_none() {
        bail!(
            "no bridge: give --bridge BRIDGE or `bridge`/`[[bridges]]` in the --config file, \
             or --docker"
        );
    }
    for (i, b) in bridges.iter().enumerate() {
        if bridges[..i].iter().any(|o| o.name == b.name) {
            bail!("bridge {:?} is given twice", b.name);
        }
    }
    let subnets = if flags.subnets.is_empty() {
        file.subnets.unwrap_or_default()
    } else {
        flags.subnets
    };
    let subnets = parse_subnets(&subnets)?;
    if !subnets.is_empty() {
        match bridges.as_mut_slice() {
            [only] if only.subnets.is_empty() => only.subnets = subnets,
            [only] => bail!(
                "subnets of bridge {:?} are given twice (--subnet and in the bridge's options)",
                only.name
            ),
            _ => bail!(
                "--subnet (or `subnets`) is for a single bridge; with several, give each its \
                 own: --bridge NAME:subnet=CIDR (or `subnets` in its [[bridges]] table)"
            ),
        }
    }
    let icc = flags.icc.or(file.icc).unwrap_or(true);
    for b in &mut bridges {
        b.icc = Some(b.icc.unwrap_or(icc));
    }
    let publish = if flags.publish.is_empty() {
        file.publish.unwrap_or_default()
    } else {
        flags.publish
    };
    // A bracketed container address: a port on the uplink's IPv6 address.
    let (publish6, publish): (Vec<&String>, Vec<&String>) =
        publish.iter().partition(|s| Publish6Spec::is_ipv6(s));
    let publish6 = publish6
        .iter()
        .map(|s| {
            let spec = Publish6Spec::parse(s)?;
            if spec.target.is_none() {
                bail!("bad publish spec {s:?}: no container address");
            }
            Ok(spec)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let publish = publish
        .iter()
        .map(|s| PublishSpec::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(dup) = crate::table::publish::duplicates(&publish) {
        bail!("{dup}");
    }
    let port_range = flags
        .port_range
        .or(file.port_range)
        .as_deref()
        .map(str::parse::<PortRange>)
        .transpose()?;
    let table_size = flags
        .table_size
        .or(file.table_size)
        .unwrap_or(bpfnat_common::DEFAULT_TABLE_SIZE);
    let tc_mode = match (flags.tc_mode, file.tc_mode) {
        (Some(m), _) => m,
        (None, Some(s)) => TcMode::from_str(&s, true).map_err(|_| {
            anyhow!("bad tc_mode {s:?} in the config file: expected auto, tcx or clsact")
        })?,
        (None, None) => TcMode::Auto,
    };
    let sweep = flags
        .sweep_interval
        .or(file.sweep_interval)
        .unwrap_or(DEFAULT_SWEEP_INTERVAL);
    if sweep == 0 {
        bail!("--sweep-interval must be at least 1 second");
    }
    let mut timeouts = Timeouts::KERNEL;
    for (name, secs) in file.timeouts.unwrap_or_default() {
        set_timeout(&mut timeouts, &name, secs).context("in [timeouts] of the config file")?;
    }
    for item in &flags.timeouts {
        apply_timeout_item(&mut timeouts, item)?;
    }
    Ok(Settings {
        uplink,
        bridges,
        publish,
        publish6,
        port_range,
        table_size,
        tc_mode,
        timeouts,
        sweep_interval: Duration::from_secs(sweep),
        instance,
        status: flags.status,
        metrics: flags.metrics,
        keep: flags.keep,
        docker,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge_flags(flags: UpFlags, file: Option<FileConfig>) -> anyhow::Result<Settings> {
        merge(flags, file, "test".to_owned())
    }

    const FULL: &str = r#"
uplink = "ens5"
bridge = "docker1"
subnets = ["172.18.0.0/24", "172.19.0.0/16"]
port_range = "20000-29999"
table_size = 4096
tc_mode = "clsact"
sweep_interval = 2

[timeouts]
udp_one_way = 3
tcp_established = 7440
"#;

    #[test]
    fn file_gives_every_setting() {
        let file = FileConfig::parse(FULL, "t.toml").unwrap();
        let s = merge_flags(UpFlags::default(), Some(file)).unwrap();
        assert_eq!(s.uplink, "ens5");
        assert_eq!(s.bridges.len(), 1);
        assert_eq!(s.bridges[0].name, "docker1");
        assert_eq!(s.bridges[0].subnets.len(), 2);
        assert_eq!(s.bridges[0].icc, Some(true));
        assert_eq!(
            s.port_range,
            Some(PortRange {
                lo: 20000,
                hi: 29999
            })
        );
        assert_eq!((s.table_size, s.tc_mode), (4096, TcMode::Clsact));
        assert_eq!(s.sweep_interval, Duration::from_secs(2));
        assert_eq!(
            (s.timeouts.udp_one_way, s.timeouts.tcp_established),
            (3, 7440)
        );
        assert_eq!(s.timeouts.icmp, Timeouts::KERNEL.icmp);
    }

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig::parse(FULL, "t.toml").unwrap();
        let flags = UpFlags {
            uplink: Some("eth1".into()),
            subnets: vec!["10.0.0.0/8".into()],
            table_size: Some(128),
            tc_mode: Some(TcMode::Tcx),
            timeouts: vec!["udp_one_way=9".into()],
            ..UpFlags::default()
        };
        let s = merge_flags(flags, Some(file)).unwrap();
        assert_eq!(
            (s.uplink.as_str(), s.bridges[0].name.as_str()),
            ("eth1", "docker1")
        );
        assert_eq!(
            s.bridges[0].subnets,
            vec!["10.0.0.0/8".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!((s.table_size, s.tc_mode), (128, TcMode::Tcx));
        assert_eq!(
            (s.timeouts.udp_one_way, s.timeouts.tcp_established),
            (9, 7440)
        );
    }

    #[test]
    fn defaults_and_missing_interfaces() {
        let flags = UpFlags {
            uplink: Some("a".into()),
            bridges: vec!["b".into()],
            ..UpFlags::default()
        };
        let s = merge_flags(flags, None).unwrap();
        assert_eq!(s.table_size, bpfnat_common::DEFAULT_TABLE_SIZE);
        assert_eq!(s.tc_mode, TcMode::Auto);
        assert_eq!(
            s.sweep_interval,
            Duration::from_secs(DEFAULT_SWEEP_INTERVAL)
        );
        assert_eq!(s.timeouts, Timeouts::KERNEL);
        let err = merge_flags(UpFlags::default(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--uplink"), "{err}");
    }

    #[test]
    fn bridges_icc_and_publish() {
        const MULTI: &str = r#"
uplink = "ens5"
bridge = "docker0"
icc = false
publish = ["8080:172.17.0.2:80", "5353:10.91.0.3:53/udp"]

[[bridges]]
name = "br-back"
internal = true
subnets = ["10.91.0.0/24"]

[[bridges]]
name = "br-front"
icc = true
"#;
        let file = FileConfig::parse(MULTI, "t.toml").unwrap();
        let s = merge_flags(UpFlags::default(), Some(file.clone())).unwrap();
        let names: Vec<_> = s.bridges.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["docker0", "br-back", "br-front"]);
        // The global icc=false applies where a bridge does not say otherwise.
        let icc: Vec<_> = s.bridges.iter().map(|b| b.icc).collect();
        assert_eq!(icc, [Some(false), Some(false), Some(true)]);
        assert!(s.bridges[1].internal && !s.bridges[0].internal);
        assert_eq!(s.publish.len(), 2);
        assert_eq!(s.publish[1].to_string(), "5353:10.91.0.3:53/udp");

        // Flags replace the file's bridges and publishes; --icc=true overrides its icc.
        let flags = UpFlags {
            bridges: vec!["a:internal".into(), "b:icc=false,subnet=10.9.0.0/24".into()],
            icc: Some(true),
            publish: vec!["1-3:10.9.0.2:80".into()],
            ..UpFlags::default()
        };
        let s = merge_flags(flags, Some(file)).unwrap();
        let got: Vec<_> = s
            .bridges
            .iter()
            .map(|b| (b.name.as_str(), b.icc, b.internal, b.subnets.len()))
            .collect();
        assert_eq!(
            got,
            [("a", Some(true), true, 0), ("b", Some(false), false, 1)]
        );
        assert_eq!(s.publish[0].entries().len(), 3);
        // A bracketed address: on the uplink's IPv6 address.
        let s = merge_flags(
            UpFlags {
                uplink: Some("u".into()),
                bridges: vec!["a".into()],
                publish: vec!["8080:10.9.0.2:80".into(), "8080:[fd00:9::2]:80".into()],
                ..UpFlags::default()
            },
            None,
        )
        .unwrap();
        assert_eq!((s.publish.len(), s.publish6.len()), (1, 1));
        assert_eq!(s.publish6[0].to_string(), "[::]:8080:[fd00:9::2]:80/tcp");

        let base = || UpFlags {
            uplink: Some("u".into()),
            ..UpFlags::default()
        };
        for (flags, why) in [
            (
                UpFlags {
                    bridges: vec!["a".into(), "b".into()],
                    subnets: vec!["10.0.0.0/24".into()],
                    ..base()
                },
                "--subnet (or `subnets`) is for a single bridge",
            ),
            (
                UpFlags {
                    bridges: vec!["a".into(), "a:icc=false".into()],
                    ..base()
                },
                "bridge \"a\" is given twice",
            ),
            (
                UpFlags {
                    bridges: vec!["a".into()],
                    publish: vec!["80:10.0.0.2:80".into(), "80:10.0.0.3:80".into()],
                    ..base()
                },
                "80/tcp is published twice",
            ),
            (
                UpFlags {
                    bridges: vec!["a".into()],
                    publish: vec!["80".into()],
                    ..base()
                },
                "bad publish spec \"80\"",
            ),
            (base(), "no bridge"),
        ] {
            let err = format!("{:#}", merge_flags(flags, None).unwrap_err());
            assert!(err.contains(why), "{why}: {err}");
        }
        let err = FileConfig::parse("[[bridges]]\nname = \"a\"\nbogus = 1\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn docker_needs_no_bridge() {
        let flags = UpFlags {
            uplink: Some("ens5".into()),
            docker_host: Some("unix:///run/d.sock".into()),
            ..UpFlags::default()
        };
        let s = merge_flags(flags, None).unwrap();
        assert!(s.bridges.is_empty());
        assert_eq!(s.docker.as_deref(), Some("unix:///run/d.sock"));
        // The file's docker_host implies docker; docker = false turns it off.
        let file = FileConfig::parse(
            "uplink = \"ens5\"\ndocker_host = \"tcp://127.0.0.1:2375\"\n",
            "t.toml",
        )
        .unwrap();
        let s = merge_flags(UpFlags::default(), Some(file)).unwrap();
        assert_eq!(s.docker.as_deref(), Some("tcp://127.0.0.1:2375"));
        let file = FileConfig::parse(
            "uplink = \"ens5\"\nbridge = \"b\"\ndocker = false\ndocker_host = \"tcp://h:1\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            merge_flags(UpFlags::default(), Some(file)).unwrap().docker,
            None
        );
        // --docker with the file's address.
        let file = FileConfig::parse("docker_host = \"unix:///x.sock\"\n", "t.toml").unwrap();
        let flags = UpFlags {
            uplink: Some("ens5".into()),
            docker: true,
            ..UpFlags::default()
        };
        let s = merge_flags(flags, Some(file)).unwrap();
        assert_eq!(s.docker.as_deref(), Some("unix:///x.sock"));
        let err = merge_flags(
            UpFlags {
                uplink: Some("ens5".into()),
                docker_host: Some("ssh://me@h".into()),
                ..UpFlags::default()
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("unsupported Docker host \"ssh://me@h\""),
            "{err}"
        );
        // Neither a bridge nor Docker: nothing to serve.
        let err = merge_flags(
            UpFlags {
                uplink: Some("ens5".into()),
                ..UpFlags::default()
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--docker"), "{err}");
    }

    #[test]
    fn bad_files_fail_with_one_line() {
        for (text, want) in [
            (
                "uplink = \"a\"\nbogus = 1\n",
                "line 2: unknown field `bogus`",
            ),
            ("uplink = 3\n", "line 1"),
            ("[timeouts]\nudp = 3\n", ""),
            ("uplink = \"a\"\nuplink = \"b\"\n", "line 2"),
            ("uplink = \n", "line 1"),
        ] {
            let res = FileConfig::parse(text, "t.toml")
                .and_then(|f| merge_flags(UpFlags::default(), Some(f)));
            let err = format!("{:#}", res.unwrap_err());
            assert!(!err.contains('\n'), "{text:?}: {err}");
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let f = FileConfig::parse("[timeouts]\nudp = 3\n", "t.toml").unwrap();
        let err = format!(
            "{:#}",
            merge_flags(
                UpFlags {
                    uplink: Some("a".into()),
                    bridges: vec!["b".into()],
                    ..UpFlags::default()
                },
                Some(f)
            )
            .unwrap_err()
        );
        assert!(err.contains("unknown timeout \"udp\""), "{err}");
        let f = FileConfig::parse("tc_mode = \"xdp\"\n", "t.toml").unwrap();
        let err = format!(
            "{:#}",
            merge_flags(
                UpFlags {
                    uplink: Some("a".into()),
                    bridges: vec!["b".into()],
                    ..UpFlags::default()
                },
                Some(f)
            )
            .unwrap_err()
        );
        assert!(err.contains("bad tc_mode"), "{err}");
    }

    #[test]
    fn timeouts_override_kernel_defaults() {
        let mut t = Timeouts::KERNEL;
        apply_timeout_item(&mut t, "udp_one_way=3").unwrap();
        apply_timeout_item(&mut t, " tcp_time_wait = 2").unwrap();
        assert_eq!(
            (t.udp_one_way, t.tcp_time_wait, t.tcp_established),
            (3, 2, 432_000)
        );
        for name in TIMEOUT_NAMES {
            let mut t = Timeouts::KERNEL;
            set_timeout(&mut t, name, 7).unwrap();
            assert_ne!(t, Timeouts::KERNEL, "{name} is not wired to a field");
        }
        for bad in ["udp=3", "udp_one_way", "udp_one_way=x", "icmp=0"] {
            let mut t = Timeouts::KERNEL;
            assert!(apply_timeout_item(&mut t, bad).is_err(), "{bad}");
        }
    }
}
