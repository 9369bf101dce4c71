//! The arms: how the host namespace forwards (and translates) the client's traffic, how each
//! is set up, and how it is removed without a trace before the next one.

use std::{
    fs,
    net::IpAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use super::{
    proc::{cmd_stdin, in_ns, signal, tail, Proc},
    topo::{self, Family, BRIDGE, BRIDGE_PORT, HOST_NS, SUBNET, SUBNET6, UPLINK},
    Ctx,
};
use crate::cmd;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    Routed,
    Iptables,
    Nftables,
    NftFlowtable,
    Bpfnat,
}

impl Arm {
    pub const ALL: [Arm; 5] = [
        Arm::Routed,
        Arm::Iptables,
        Arm::Nftables,
        Arm::NftFlowtable,
        Arm::Bpfnat,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Arm::Routed => "routed",
            Arm::Iptables => "iptables",
            Arm::Nftables => "nftables",
            Arm::NftFlowtable => "nftables-flowtable",
            Arm::Bpfnat => "bpfnat",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Arm::Routed => {
                "no NAT, no netfilter rule: plain forwarding, with routes back to the client \
                 subnets on the server side (the reference)"
            }
            Arm::Iptables => {
                "Docker's rules, for IPv4 (iptables-restore) and IPv6 (ip6tables-restore, as \
                 Docker installs them for a network with --ipv6): FORWARD policy DROP, \
                 DOCKER-USER and DOCKER-ISOLATION chains, established/related back to the \
                 bridge, bridge out accepted; nat POSTROUTING -s SUBNET ! -o BRIDGE -j \
                 MASQUERADE"
            }
            Arm::Nftables => {
                "native nftables, one inet table for both families: forward chain (policy \
                 drop, the same accepts) and masquerade (ip and ip6 saddr) in a nat \
                 postrouting chain"
            }
            Arm::NftFlowtable => {
                "the nftables arm plus a flowtable on the bridge port and the uplink \
                 (`flow add @ft` for TCP and UDP, both families): netfilter's own fast path"
            }
            Arm::Bpfnat => {
                "`bpfnat up --uplink UPLINK --bridge BRIDGE` with default settings (the \
                 bridge's IPv4 and IPv6 subnets served), no netfilter rule"
            }
        }
    }

    /// The source address the server must see.
    pub fn expected_peer(self, family: Family) -> IpAddr {
        match self {
            Arm::Routed => family.client(),
            _ => family.uplink(),
        }
    }
}

/// Docker's filter and nat rules for one bridge network (what `iptables-save` shows on a host
/// running Docker 24-27 with no published port), with our names.
pub fn docker_iptables_rules() -> String {
    docker_rules(SUBNET, "127.0.0.0/8")
}

/// The same for IPv6 (`ip6tables-save` of a network created with `--ipv6`): Docker installs
/// the same chains and rules, with the IPv6 subnet and loopback.
pub fn docker_ip6tables_rules() -> String {
    docker_rules(SUBNET6, "::1/128")
}

fn docker_rules(subnet: &str, loopback: &str) -> String {
    format!(
        "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d {loopback} -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s {subnet} ! -o {BRIDGE} -j MASQUERADE
-A DOCKER -i {BRIDGE} -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o {BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o {BRIDGE} -j DOCKER
-A FORWARD -i {BRIDGE} ! -o {BRIDGE} -j ACCEPT
-A FORWARD -i {BRIDGE} -o {BRIDGE} -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i {BRIDGE} ! -o {BRIDGE} -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o {BRIDGE} -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"
    )
}

/// The nftables arm's ruleset; with `flowtable`, plus the offload.
pub fn nft_ruleset(flowtable: bool) -> String {
    let (ft_decl, ft_rule) = if flowtable {
        (
            format!(
                "\tflowtable ft {{\n\t\thook ingress priority filter;\n\t\tdevices = {{ {BRIDGE_PORT}, {UPLINK} }};\n\t}}\n"
            ),
            "\t\tmeta l4proto { tcp, udp } flow add @ft\n".to_owned(),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        "table inet bnb_nat {{
{ft_decl}\tchain forward {{
\t\ttype filter hook forward priority filter; policy drop;
{ft_rule}\t\toifname \"{BRIDGE}\" ct state established,related accept
\t\tiifname \"{BRIDGE}\" oifname != \"{BRIDGE}\" accept
\t\tiifname \"{BRIDGE}\" oifname \"{BRIDGE}\" accept
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr {SUBNET} oifname != \"{BRIDGE}\" masquerade
\t\tip6 saddr {SUBNET6} oifname != \"{BRIDGE}\" masquerade
\t}}
}}
"
    )
}

/// Whether the kernel can make an nftables flowtable (NF_FLOW_TABLE): try one in the host
/// namespace and remove it. Err(reason) when it cannot.
pub fn flowtable_support() -> Result<(), String> {
    let probe = format!(
        "table inet bnb_probe {{\n\tflowtable ft {{\n\t\thook ingress priority filter;\n\t\tdevices = {{ {UPLINK} }};\n\t}}\n}}\n"
    );
    let result = cmd_stdin(in_ns(HOST_NS, "nft").args(["-f", "-"]), &probe);
    let _ = cmd(in_ns(HOST_NS, "nft").args(["delete", "table", "inet", "bnb_probe"]));
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = format!("{e:#}");
            // nft's own message, without the command line and the caret lines.
            let why = text
                .find("Error:")
                .map(|i| text[i..].lines().next().unwrap_or("").trim().to_owned())
                .unwrap_or_else(|| one_line(&text));
            Err(format!(
                "the kernel refused to create an nftables flowtable (nft: \"{why}\"); \
                 it needs CONFIG_NF_FLOW_TABLE"
            ))
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `iptables` is the nf_tables flavour (Debian's default) or legacy x_tables.
pub fn iptables_is_nft() -> bool {
    cmd(Command::new("iptables").arg("--version")).is_ok_and(|v| v.contains("nf_tables"))
}

/// An arm in place; `teardown` removes it (Drop does it best-effort on errors).
pub struct Active {
    pub arm: Arm,
    pub daemon: Option<Daemon>,
    torn_down: bool,
}

pub fn setup(ctx: &Ctx, arm: Arm) -> anyhow::Result<Active> {
    let mut active = Active {
        arm,
        daemon: None,
        torn_down: false,
    };
    match arm {
        Arm::Routed => topo::add_return_route()?,
        Arm::Iptables => {
            cmd_stdin(
                &mut in_ns(HOST_NS, "iptables-restore"),
                &docker_iptables_rules(),
            )
            .context("loading Docker's iptables rules")?;
            cmd_stdin(
                &mut in_ns(HOST_NS, "ip6tables-restore"),
                &docker_ip6tables_rules(),
            )
            .context("loading Docker's ip6tables rules")?;
        }
        Arm::Nftables => {
            cmd_stdin(in_ns(HOST_NS, "nft").args(["-f", "-"]), &nft_ruleset(false))
                .context("loading the nftables ruleset")?;
        }
        Arm::NftFlowtable => {
            cmd_stdin(in_ns(HOST_NS, "nft").args(["-f", "-"]), &nft_ruleset(true))
                .context("loading the nftables flowtable ruleset")?;
        }
        Arm::Bpfnat => active.daemon = Some(Daemon::start(ctx, &[])?),
    }
    Ok(active)
}

/// The bpfnat arm with extra `bpfnat up` arguments (the scale section's table size).
pub fn setup_bpfnat(ctx: &Ctx, extra: &[&str]) -> anyhow::Result<Active> {
    Ok(Active {
        arm: Arm::Bpfnat,
        daemon: Some(Daemon::start(ctx, extra)?),
        torn_down: false,
    })
}

impl Active {
    pub fn teardown(mut self) -> anyhow::Result<()> {
        self.torn_down = true;
        let name = self.arm.name();
        if let Some(d) = self.daemon.take() {
            d.stop(Duration::from_secs(30))
                .with_context(|| format!("stopping the {name} arm's daemon"))?;
        }
        remove_everything(ctx_iptables_nft());
        check_clean().with_context(|| format!("after removing the {name} arm"))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if !self.torn_down {
            drop(self.daemon.take());
            remove_everything(ctx_iptables_nft());
        }
    }
}

fn ctx_iptables_nft() -> bool {
    use std::sync::OnceLock;
    static NFT: OnceLock<bool> = OnceLock::new();
    *NFT.get_or_init(iptables_is_nft)
}

/// Remove whatever any arm may have put in place (idempotent, never fails): the routed arm's
/// route, every netfilter rule of the host namespace, its conntrack entries.
pub fn remove_everything(iptables_nft: bool) {
    topo::del_return_route();
    if !iptables_nft {
        // Legacy x_tables are not in the nft ruleset.
        for tool in ["iptables", "ip6tables"] {
            for args in [
                &["-t", "filter", "-F"][..],
                &["-t", "filter", "-X"],
                &["-t", "filter", "-P", "FORWARD", "ACCEPT"],
                &["-t", "nat", "-F"],
                &["-t", "nat", "-X"],
            ] {
                let _ = cmd(in_ns(HOST_NS, tool).args(args));
            }
        }
    }
    // Also deletes the tables iptables-nft made, and with them netfilter's hooks.
    let _ = cmd(in_ns(HOST_NS, "nft").args(["flush", "ruleset"]));
    // conntrack -F flushes one family (IPv4 unless told).
    let _ = cmd(in_ns(HOST_NS, "conntrack").arg("-F"));
    let _ = cmd(in_ns(HOST_NS, "conntrack").args(["-F", "-f", "ipv6"]));
}

/// Fails unless the host namespace is back to plain forwarding with no trace of any arm.
pub fn check_clean() -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let nft = cmd(in_ns(HOST_NS, "nft").args(["list", "ruleset"]))?;
    if !nft.trim().is_empty() {
        problems.push(format!("nftables ruleset not empty: {}", one_line(&nft)));
    }
    for tool in ["iptables-save", "ip6tables-save"] {
        let saved = cmd(&mut in_ns(HOST_NS, tool))?;
        let rules: Vec<&str> = saved
            .lines()
            .filter(|l| l.starts_with("-A") || l.starts_with(":FORWARD DROP"))
            .collect();
        if !rules.is_empty() {
            problems.push(format!("{tool}: rules remain: {rules:?}"));
        }
    }
    let ct = conntrack_count()?;
    if ct != 0 {
        problems.push(format!("{ct} conntrack entries remain"));
    }
    if topo::wan_has_return_route() {
        problems.push(format!(
            "a route to {SUBNET} or {SUBNET6} remains on the WAN side"
        ));
    }
    if topo::pin_dir().exists() {
        problems.push(format!("{} remains", topo::pin_dir().display()));
    }
    // clsact/XDP programs (bpftool 7.1 does not list TCX; Daemon::stop checks that the
    // daemon's programs, hence its TCX links, are gone).
    let net: Value =
        serde_json::from_str(&cmd(in_ns(HOST_NS, "bpftool").args(["net", "show", "-j"]))?)
            .context("bpftool net show -j")?;
    let attached: Vec<String> = net
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|o| o.iter())
        .filter(|(_, v)| v.as_array().is_some_and(|a| !a.is_empty()))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    if !attached.is_empty() {
        problems.push(format!("BPF programs attached in {HOST_NS}: {attached:?}"));
    }
    if !problems.is_empty() {
        bail!("the host namespace is not clean: {}", problems.join("; "));
    }
    Ok(())
}

/// Entries in the host namespace's conntrack table.
pub fn conntrack_count() -> anyhow::Result<u64> {
    let out = cmd(in_ns(HOST_NS, "conntrack").arg("-C"))?;
    out.trim()
        .parse()
        .with_context(|| format!("conntrack -C printed {out:?}"))
}

/// A BPF program of our daemon.
#[derive(Clone, Debug)]
pub struct Prog {
    pub id: u64,
    pub name: String,
}

/// A running `bpfnat up` in the host namespace.
pub struct Daemon {
    proc: Option<Proc>,
    pub ready_line: String,
    /// The programs that use the instance's NAT_OUT map (found when it became ready).
    pub programs: Vec<Prog>,
    pub pid: u32,
}

impl Daemon {
    pub fn start(ctx: &Ctx, extra: &[&str]) -> anyhow::Result<Self> {
        let mut c = Command::new(&ctx.bpfnat);
        c.args([
            "--netns", HOST_NS, "up", "--uplink", UPLINK, "--bridge", BRIDGE,
        ])
        .args(extra);
        let proc = Proc::spawn("bpfnat-up", c, &ctx.scratch)?;
        let pid = proc.pid().context("bpfnat pid")?;
        let mut d = Daemon {
            proc: Some(proc),
            ready_line: String::new(),
            programs: Vec::new(),
            pid,
        };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let p = d.proc.as_mut().context("bpfnat")?;
            let out = fs::read_to_string(&p.stdout).unwrap_or_default();
            if let Some(line) = out.lines().find(|l| l.starts_with("ready:")) {
                d.ready_line = line.to_owned();
                break;
            }
            if let Some(status) = p.try_wait()? {
                bail!(
                    "bpfnat up exited ({status}) before its ready: line: {}",
                    p.stderr_tail()
                );
            }
            if Instant::now() > end {
                bail!("bpfnat up not ready after 30 s: {}", p.stderr_tail());
            }
            super::proc::sleep(Duration::from_millis(20))?;
        }
        d.programs = programs_using(&topo::pin_dir())?;
        if d.programs.is_empty() {
            bail!("bpfnat is ready but no loaded program uses its pinned maps");
        }
        Ok(d)
    }

    /// SIGINT, wait for a clean exit, then check that its programs (and so its TCX links,
    /// which hold them) and its pins are gone.
    pub fn stop(mut self, limit: Duration) -> anyhow::Result<()> {
        let mut p = self.proc.take().context("bpfnat already stopped")?;
        signal(self.pid, "INT");
        let status = p.wait_for(limit)?;
        let Some(status) = status else {
            drop(p); // SIGTERM, then SIGKILL
            let _ = fs::remove_dir_all(topo::pin_dir());
            bail!("bpfnat did not stop within {limit:?} of SIGINT (killed)");
        };
        if !status.success() {
            bail!(
                "bpfnat exited with {status}: {}",
                tail(&fs::read_to_string(&p.stderr).unwrap_or_default())
            );
        }
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<&Prog> = self
                .programs
                .iter()
                .filter(|prog| {
                    crate::cmd_ok(Command::new("bpftool").args([
                        "prog",
                        "show",
                        "id",
                        &prog.id.to_string(),
                    ]))
                })
                .collect();
            if left.is_empty() {
                break;
            }
            if Instant::now() > end {
                bail!(
                    "bpfnat stopped but its programs are still loaded (still attached?): {left:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if topo::pin_dir().exists() {
            bail!("bpfnat stopped but left {}", topo::pin_dir().display());
        }
        Ok(())
    }

    /// `bpfnat stats --json` of the running instance.
    pub fn stats(&self, ctx: &Ctx) -> anyhow::Result<Value> {
        let out = cmd(Command::new(&ctx.bpfnat).args(["--netns", HOST_NS, "stats", "--json"]))?;
        serde_json::from_str(out.trim()).context("bpfnat stats --json")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            signal(self.pid, "INT");
            let _ = p.wait_for(Duration::from_secs(30));
            drop(p); // SIGTERM, SIGKILL if still running
            if topo::pin_dir().exists() {
                let _ = fs::remove_dir_all(topo::pin_dir());
            }
        }
    }
}

/// The loaded programs that use any map pinned in the instance directory `dir` (our
/// daemon's, not those of any other bpfnat running on the machine).
pub fn programs_using(dir: &Path) -> anyhow::Result<Vec<Prog>> {
    let mut map_ids = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if let Ok(map) = bpftool_json(&["map", "show", "pinned", &path.to_string_lossy()]) {
            if let Some(id) = map["id"].as_u64() {
                map_ids.push(id);
            }
        }
    }
    if map_ids.is_empty() {
        bail!("no pinned map in {}", dir.display());
    }
    let progs = bpftool_json(&["prog", "show"])?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["map_ids"].as_array().is_some_and(|ids| {
                ids.iter()
                    .any(|i| i.as_u64().is_some_and(|i| map_ids.contains(&i)))
            })
        })
        .filter_map(|p| {
            Some(Prog {
                id: p["id"].as_u64()?,
                name: p["name"].as_str().unwrap_or("?").to_owned(),
            })
        })
        .collect())
}

pub fn bpftool_json(args: &[&str]) -> anyhow::Result<Value> {
    let out = cmd(Command::new("bpftool").args(args).arg("-j"))?;
    serde_json::from_str(&out).with_context(|| format!("bpftool {args:?}: bad JSON"))
}

/// Record of the arm in place, for the results: what is configured.
pub fn describe_state(arm: Arm) -> Value {
    match arm {
        Arm::Iptables => json!({
            "iptables_save": cmd(&mut in_ns(HOST_NS, "iptables-save")).unwrap_or_default(),
            "ip6tables_save": cmd(&mut in_ns(HOST_NS, "ip6tables-save")).unwrap_or_default(),
        }),
        Arm::Nftables | Arm::NftFlowtable => {
            json!({"nft_ruleset": cmd(in_ns(HOST_NS, "nft").args(["list", "ruleset"])).unwrap_or_default()})
        }
        _ => json!({}),
    }
}
