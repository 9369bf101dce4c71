//! Following a Docker daemon (`bpfnat up --docker`): its bridge networks, its running
//! containers' endpoints and their published ports, read from the Docker Engine API (with
//! `bollard`) and reduced to a [`DockerState`]: what bpfnat serves for Docker.
//!
//! The follower asks for everything once, then keeps following the event stream; each
//! relevant event (a burst of them is one) means "ask again", so the state handed on is
//! always a whole snapshot, never a delta that a lost event could spoil. When the daemon goes
//! away (restarted, upgraded) the last state stays as it is, and the follower connects again
//! every second; the first snapshot after that reconciles whatever changed meanwhile.
//! Applying the state is [`crate::daemon::docker_sync`]'s job.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};
use bollard::{
    models::{ContainerSummary, Network as ApiNetwork, PortTypeEnum},
    query_parameters::{
        EventsOptionsBuilder, InspectContainerOptions, ListContainersOptions,
        ListNetworksOptionsBuilder,
    },
    Docker,
};
use bpfnat_common::{
    addr6_to_map, addr_to_map, PublishKey, PublishKey6, PublishTarget, PublishTarget6, IPPROTO_TCP,
    IPPROTO_UDP,
};
use futures::StreamExt as _;
use log::{debug, info, warn};
use tokio::sync::watch;

use crate::util::addr::{Ipv4Net, Ipv6Net};

/// Where the Docker daemon listens unless `--docker-host` or `$DOCKER_HOST` says otherwise.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Network options of the bridge driver that bpfnat follows.
const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
const OPT_ICC: &str = "com.docker.network.bridge.enable_icc";
const OPT_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";
const OPT_HOST_BINDING: &str = "com.docker.network.bridge.host_binding_ipv4";

/// How long a burst of events is gathered before the daemon is asked again.
const EVENT_BURST: Duration = Duration::from_millis(20);
/// Pause between two attempts to reach the daemon.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// Bound on one API call: a daemon that hangs is treated as gone.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// A Docker network of the `bridge` driver with at least one IPv4 subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Network {
    pub id: String,
    pub name: String,
    /// The Linux bridge: `com.docker.network.bridge.name`, else `br-` and the id's first 12
    /// characters (Docker's own naming).
    pub bridge: String,
    pub subnets: Vec<Ipv4Net>,
    /// Its IPv6 subnets (a network made with `--ipv6`).
    pub subnets6: Vec<Ipv6Net>,
    pub icc: bool,
    pub internal: bool,
    pub masquerade: bool,
    /// `host_binding_ipv4`: where its containers' ports are published when `-p` names no
    /// address (Docker reports the bindings with it already applied).
    pub host_binding: Option<Ipv4Addr>,
}

/// A running container's endpoint on one of those networks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Endpoint {
    /// The container's name (for messages).
    pub container: String,
    /// The network's id.
    pub network: String,
    /// Docker's id of the endpoint: a new one every time the container (re)starts.
    pub endpoint_id: String,
    pub addr: Ipv4Addr,
    /// Its IPv6 address on an `--ipv6` network.
    pub addr6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
}

/// One published host port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Publish {
    pub key: PublishKey,
    pub target: PublishTarget,
}

/// One host port published on the uplink's IPv6 address (`-p` on an `--ipv6` network).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Publish6 {
    pub key: PublishKey6,
    pub target: PublishTarget6,
}

/// Everything bpfnat serves for Docker, as of one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DockerState {
    pub networks: Vec<Network>,
    pub endpoints: Vec<Endpoint>,
    pub publishes: Vec<Publish>,
    pub publishes6: Vec<Publish6>,
    /// Published ports left out, with why (e.g. SCTP with another container port).
    pub skipped: Vec<String>,
    /// The running containers' network namespaces (`SandboxKey`).
    pub sandboxes: Vec<PathBuf>,
}

/// Refuse an address `connect` cannot use (a start-up error, not a retry loop).
pub(crate) fn check_host(url: &str) -> anyhow::Result<()> {
    let known = ["unix:///", "/", "tcp://", "http://"];
    if known.iter().any(|p| url.starts_with(p)) {
        return Ok(());
    }
    bail!("unsupported Docker host {url:?}: expected unix://PATH or tcp://HOST:PORT");
}

/// Open a client for `url` (`unix://PATH`, or `tcp://`/`http://HOST:PORT`), with the API
/// version negotiated down to the daemon's (Docker 20.10 speaks 1.41).
async fn connect(url: &str) -> anyhow::Result<Docker> {
    let docker = if url.starts_with("unix://") || url.starts_with('/') {
        let path = url.strip_prefix("unix://").unwrap_or(url);
        Docker::connect_with_unix(path, API_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
    } else if let Some(rest) = url.strip_prefix("tcp://") {
        Docker::connect_with_http(
            &format!("http://{rest}"),
            API_TIMEOUT.as_secs(),
            bollard::API_DEFAULT_VERSION,
        )
    } else if url.starts_with("http://") {
        Docker::connect_with_http(url, API_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
    } else {
        check_host(url)?;
        bail!("unsupported Docker host {url:?}");
    }
    .with_context(|| format!("Docker daemon at {url}"))?;
    tokio::time::timeout(API_TIMEOUT, docker.negotiate_version())
        .await
        .map_err(|_| anyhow!("Docker daemon at {url}: no answer"))?
        .with_context(|| format!("Docker daemon at {url}"))
}

/// Follow the daemon at `url` from a task of its own. The receiver holds None until the
/// first snapshot, then the latest one.
pub(crate) fn follow(url: String) -> watch::Receiver<Option<DockerState>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut sandboxes = SandboxCache::default();
        let mut failing = false;
        loop {
            let result = session(&url, &tx, &mut sandboxes, &mut failing).await;
            if tx.is_closed() {
                return;
            }
            if let Err(e) = result {
                if !failing {
                    warn!(
                        "{e:#}: keeping what is served as it is, trying again every {}s",
                        RECONNECT_PAUSE.as_secs()
                    );
                    failing = true;
                }
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    });
    rx
}

/// One connection: a snapshot, then one more after every burst of relevant events, until the
/// stream ends or fails.
async fn session(
    url: &str,
    tx: &watch::Sender<Option<DockerState>>,
    sandboxes: &mut SandboxCache,
    failing: &mut bool,
) -> anyhow::Result<()> {
    let docker = connect(url).await?;
    // Events from a little before the snapshot are replayed: a change made while it was
    // taken is seen again rather than missed (asking once more is harmless).
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().saturating_sub(2));
    let filters = HashMap::from([("type", vec!["container", "network"])]);
    let mut events = docker.events(Some(
        EventsOptionsBuilder::new()
            .since(&since.to_string())
            .filters(&filters)
            .build(),
    ));
    let state = snapshot(&docker, sandboxes).await?;
    if std::mem::take(failing) {
        info!("Docker daemon at {url} is reachable again");
    }
    tx.send_replace(Some(state));
    loop {
        let first = events.next().await;
        let mut relevant = is_relevant(first)?;
        // Gather the rest of the burst (a container start is several events).
        while let Ok(next) = tokio::time::timeout(EVENT_BURST, events.next()).await {
            relevant |= is_relevant(next)?;
        }
        if relevant {
            tx.send_replace(Some(snapshot(&docker, sandboxes).await?));
        }
    }
}

/// Whether an event changes what bpfnat serves; an error when the stream failed or ended.
fn is_relevant(
    event: Option<Result<bollard::models::EventMessage, bollard::errors::Error>>,
) -> anyhow::Result<bool> {
    let event = match event {
        None => bail!("the Docker daemon closed its event stream"),
        Some(Err(e)) => return Err(e).context("Docker event stream"),
        Some(Ok(e)) => e,
    };
    let action = event.action.as_deref().unwrap_or_default();
    // Container events that do not change its network (exec, health checks, attach, ...)
    // are left out; network events (create, destroy, connect, disconnect) all count.
    let relevant = match event.typ {
        Some(bollard::models::EventMessageTypeEnum::NETWORK) => true,
        Some(bollard::models::EventMessageTypeEnum::CONTAINER) => matches!(
            action,
            "start" | "die" | "stop" | "kill" | "destroy" | "restart" | "pause" | "unpause"
        ),
        _ => false,
    };
    debug!(
        "Docker event {:?} {action} (relevant: {relevant})",
        event.typ
    );
    Ok(relevant)
}

/// Container id -> (its endpoints' ids, its namespace file): asked once per start of a
/// container, not with every snapshot.
#[derive(Default)]
struct SandboxCache(BTreeMap<String, (String, PathBuf)>);

/// Ask the daemon for its bridge networks and running containers.
async fn snapshot(docker: &Docker, cache: &mut SandboxCache) -> anyhow::Result<DockerState> {
    let filters = HashMap::from([("driver", vec!["bridge"])]);
    let networks = tokio::time::timeout(
        API_TIMEOUT,
        docker.list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        )),
    )
    .await
    .map_err(|_| anyhow!("Docker: listing networks timed out"))?
    .context("Docker: listing networks")?;
    let containers = tokio::time::timeout(
        API_TIMEOUT,
        docker.list_containers(None::<ListContainersOptions>),
    )
    .await
    .map_err(|_| anyhow!("Docker: listing containers timed out"))?
    .context("Docker: listing containers")?;

    let mut sandboxes = Vec::new();
    let mut seen = BTreeMap::new();
    for c in &containers {
        let Some(id) = c.id.clone() else { continue };
        let endpoints: String = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .map(|n| {
                let mut ids: Vec<&str> = n
                    .values()
                    .filter_map(|e| e.endpoint_id.as_deref())
                    .collect();
                ids.sort_unstable();
                ids.join(",")
            })
            .unwrap_or_default();
        let path = match cache.0.get(&id) {
            Some((eps, path)) if *eps == endpoints => Some(path.clone()),
            _ => match tokio::time::timeout(
                API_TIMEOUT,
                docker.inspect_container(&id, None::<InspectContainerOptions>),
            )
            .await
            {
                Ok(Ok(inspect)) => inspect
                    .network_settings
                    .and_then(|n| n.sandbox_key)
                    .filter(|k| !k.is_empty())
                    .map(PathBuf::from),
                // Gone meanwhile, or slow: the next snapshot asks again.
                Ok(Err(e)) => {
                    debug!("Docker: inspecting container {id}: {e}");
                    None
                }
                Err(_) => None,
            },
        };
        if let Some(path) = path {
            sandboxes.push(path.clone());
            seen.insert(id, (endpoints, path));
        }
    }
    cache.0 = seen;
    let mut state = reduce(&networks, &containers);
    state.sandboxes = sandboxes;
    Ok(state)
}

/// The parts of the API's answers that bpfnat serves.
pub(crate) fn reduce(networks: &[ApiNetwork], containers: &[ContainerSummary]) -> DockerState {
    let mut state = DockerState {
        networks: networks.iter().filter_map(network).collect(),
        ..DockerState::default()
    };
    state.networks.sort_by(|a, b| a.name.cmp(&b.name));
    for c in containers {
        let name = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_owned())
            .or_else(|| c.id.as_ref().map(|id| id.chars().take(12).collect()))
            .unwrap_or_default();
        let mut mine: Vec<(&Network, Endpoint)> = Vec::new();
        for (net_name, ep) in c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .into_iter()
            .flatten()
        {
            let Some(net) = state
                .networks
                .iter()
                .find(|n| ep.network_id.as_deref() == Some(n.id.as_str()) || n.name == *net_name)
            else {
                continue; // not a bridge network (host, none, macvlan, ...)
            };
            let (Some(addr), Some(mac)) = (
                ep.ip_address.as_deref().and_then(|a| a.parse().ok()),
                ep.mac_address.as_deref().and_then(parse_mac),
            ) else {
                continue;
            };
            mine.push((
                net,
                Endpoint {
                    container: name.clone(),
                    network: net.id.clone(),
                    endpoint_id: ep.endpoint_id.clone().unwrap_or_default(),
                    addr,
                    addr6: ep
                        .global_ipv6_address
                        .as_deref()
                        .and_then(|a| a.parse().ok()),
                    mac,
                },
            ));
        }
        mine.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        // Ports are published to the container's address on its first network that reaches
        // the outside, as Docker's DNAT rules do for its gateway network.
        let target = mine.iter().find(|(n, _)| !n.internal).map(|(_, e)| e.addr);
        let target6 = mine
            .iter()
            .filter(|(n, _)| !n.internal)
            .find_map(|(_, e)| e.addr6);
        for port in c.ports.iter().flatten() {
            let Some(host_port) = port.public_port else {
                continue; // exposed, not published
            };
            let proto = match port.typ {
                Some(PortTypeEnum::UDP) => IPPROTO_UDP,
                Some(PortTypeEnum::SCTP) => {
                    state.skipped.push(format!(
                        "{name}: {host_port}/sctp (SCTP published ports are not served)"
                    ));
                    continue;
                }
                _ => IPPROTO_TCP,
            };
            let host_addr = match port.ip.as_deref().unwrap_or_default() {
                "" | "0.0.0.0" => 0,
                "::" => {
                    // On the uplink's IPv6 address, to the container's IPv6 address (a
                    // container on no `--ipv6` network has none: Docker's binding then
                    // leads nowhere either).
                    if let Some(addr6) = target6 {
                        let publish = Publish6 {
                            key: PublishKey6 {
                                host_port: host_port.to_be(),
                                proto,
                                pad: 0,
                            },
                            target: PublishTarget6 {
                                addr: addr6_to_map(addr6.octets()),
                                port: port.private_port.to_be(),
                                pad: 0,
                            },
                        };
                        if !state.publishes6.contains(&publish) {
                            state.publishes6.push(publish);
                        }
                    }
                    continue;
                }
                ip => match ip.parse::<Ipv4Addr>() {
                    Ok(a) => addr_to_map(a.octets()),
                    Err(_) => continue, // a specific IPv6 address: only [::] is served
                },
            };
            let Some(addr) = target else {
                state.skipped.push(format!(
                    "{name}: {host_port}: the container is on no network that reaches out"
                ));
                continue;
            };
            let publish = Publish {
                key: PublishKey {
                    host_addr,
                    host_port: host_port.to_be(),
                    proto,
                    pad: 0,
                },
                target: PublishTarget {
                    addr: addr_to_map(addr.octets()),
                    port: port.private_port.to_be(),
                    pad: 0,
                },
            };
            if !state.publishes.contains(&publish) {
                state.publishes.push(publish);
            }
        }
        state.endpoints.extend(mine.into_iter().map(|(_, e)| e));
    }
    state.endpoints.sort();
    state
}

/// A `bridge` network with an IPv4 subnet, as bpfnat serves it.
fn network(n: &ApiNetwork) -> Option<Network> {
    if n.driver.as_deref() != Some("bridge") {
        return None;
    }
    let id = n.id.clone()?;
    let options = n.options.clone().unwrap_or_default();
    let flag = |key: &str, default: bool| {
        options
            .get(key)
            .and_then(|v| crate::daemon::bridge::parse_bool(v))
            .unwrap_or(default)
    };
    let configs = || {
        n.ipam
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.subnet.as_deref())
    };
    let subnets: Vec<Ipv4Net> = configs().filter_map(|c| c.parse().ok()).collect();
    let subnets6: Vec<Ipv6Net> = if n.enable_ipv6 == Some(true) {
        configs().filter_map(|c| c.parse().ok()).collect()
    } else {
        Vec::new()
    };
    if subnets.is_empty() {
        return None; // IPv6 only: not served yet
    }
    Some(Network {
        bridge: options
            .get(OPT_BRIDGE_NAME)
            .filter(|b| !b.is_empty())
            .cloned()
            .unwrap_or_else(|| format!("br-{}", id.chars().take(12).collect::<String>())),
        name: n.name.clone().unwrap_or_else(|| id.clone()),
        id,
        subnets,
        subnets6,
        icc: flag(OPT_ICC, true),
        internal: n.internal.unwrap_or(false),
        masquerade: flag(OPT_MASQUERADE, true),
        host_binding: options
            .get(OPT_HOST_BINDING)
            .and_then(|a| a.parse().ok())
            .filter(|a: &Ipv4Addr| !a.is_unspecified()),
    })
}

/// `02:42:ac:12:00:02`.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /networks` of a Docker 20.10 daemon, trimmed: the default bridge, a user network
    /// with options, an internal one, an IPv6-only one and a macvlan.
    const NETWORKS: &str = r#"[
      {"Name":"bridge","Id":"aaaaaaaaaaaaaaaa","Driver":"bridge","Internal":false,
       "IPAM":{"Config":[{"Subnet":"172.17.0.0/16","Gateway":"172.17.0.1"}]},
       "Options":{"com.docker.network.bridge.name":"docker0",
                  "com.docker.network.bridge.enable_icc":"true",
                  "com.docker.network.bridge.enable_ip_masquerade":"true"}},
      {"Name":"net1","Id":"2023d0d97075555be720","Driver":"bridge","Internal":false,
       "IPAM":{"Config":[{"Subnet":"172.18.0.0/24"}]},
       "Options":{"com.docker.network.bridge.enable_icc":"false",
                  "com.docker.network.bridge.enable_ip_masquerade":"false",
                  "com.docker.network.bridge.host_binding_ipv4":"203.0.113.2"}},
      {"Name":"back","Id":"bbbbbbbbbbbbbbbbbbbb","Driver":"bridge","Internal":true,
       "IPAM":{"Config":[{"Subnet":"10.91.0.0/24"}]},"Options":{}},
      {"Name":"v6","Id":"cccccccccccccccc","Driver":"bridge",
       "IPAM":{"Config":[{"Subnet":"fd00:1::/64"}]}},
      {"Name":"mv","Id":"dddddddddddddddd","Driver":"macvlan",
       "IPAM":{"Config":[{"Subnet":"192.0.2.0/24"}]}}
    ]"#;

    /// `GET /containers/json`: one container on `net1` and `back` with two published ports
    /// (IPv4 and IPv6 bindings of each, as Docker lists them), one on the internal network
    /// only, publishing a port that cannot be served.
    const CONTAINERS: &str = r#"[
      {"Id":"1111","Names":["/web"],
       "Ports":[{"IP":"0.0.0.0","PrivatePort":80,"PublicPort":8080,"Type":"tcp"},
                {"IP":"::","PrivatePort":80,"PublicPort":8080,"Type":"tcp"},
                {"IP":"203.0.113.2","PrivatePort":53,"PublicPort":5353,"Type":"udp"},
                {"PrivatePort":443,"Type":"tcp"},
                {"IP":"0.0.0.0","PrivatePort":9,"PublicPort":9,"Type":"sctp"}],
       "NetworkSettings":{"Networks":{
          "net1":{"NetworkID":"2023d0d97075555be720","EndpointID":"e1",
                  "IPAddress":"172.18.0.2","MacAddress":"02:42:ac:12:00:02"},
          "back":{"NetworkID":"bbbbbbbbbbbbbbbbbbbb","EndpointID":"e2",
                  "IPAddress":"10.91.0.2","MacAddress":"02:42:0a:5b:00:02"}}}},
      {"Id":"2222","Names":["/db"],
       "Ports":[{"IP":"0.0.0.0","PrivatePort":5432,"PublicPort":5432,"Type":"tcp"}],
       "NetworkSettings":{"Networks":{
          "back":{"NetworkID":"bbbbbbbbbbbbbbbbbbbb","EndpointID":"e3",
                  "IPAddress":"10.91.0.3","MacAddress":"02:42:0a:5b:00:03"}}}},
      {"Id":"3333","Names":["/hostnet"],"Ports":[],
       "NetworkSettings":{"Networks":{"host":{"NetworkID":"eeee","EndpointID":"e4"}}}}
    ]"#;

    fn state() -> DockerState {
        let networks: Vec<ApiNetwork> = serde_json::from_str(NETWORKS).unwrap();
        let containers: Vec<ContainerSummary> = serde_json::from_str(CONTAINERS).unwrap();
        reduce(&networks, &containers)
    }

    #[test]
    fn bridge_networks_and_their_options() {
        let s = state();
        let got: Vec<_> = s
            .networks
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.bridge.as_str(),
                    n.subnets
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>(),
                    n.icc,
                    n.internal,
                    n.masquerade,
                    n.host_binding,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "back",
                    "br-bbbbbbbbbbbb",
                    vec!["10.91.0.0/24".to_owned()],
                    true,
                    true,
                    true,
                    None
                ),
                (
                    "bridge",
                    "docker0",
                    vec!["172.17.0.0/16".to_owned()],
                    true,
                    false,
                    true,
                    None
                ),
                (
                    "net1",
                    "br-2023d0d97075",
                    vec!["172.18.0.0/24".to_owned()],
                    false,
                    false,
                    false,
                    Some(Ipv4Addr::new(203, 0, 113, 2))
                ),
            ]
        );
    }

    #[test]
    fn endpoints_and_published_ports() {
        let s = state();
        let eps: Vec<_> = s
            .endpoints
            .iter()
            .map(|e| (e.container.as_str(), e.addr.to_string(), e.mac[5]))
            .collect();
        assert_eq!(
            eps,
            [
                ("db", "10.91.0.3".to_owned(), 3),
                ("web", "172.18.0.2".to_owned(), 2),
                ("web", "10.91.0.2".to_owned(), 2)
            ]
        );
        // web's ports go to its address on net1 (back is internal); the IPv6 binding, the
        // exposed-only port and SCTP are left out; db reaches nothing outside.
        let pubs: Vec<_> = s
            .publishes
            .iter()
            .map(|p| {
                (
                    Ipv4Addr::from(p.key.host_addr.to_ne_bytes()),
                    u16::from_be(p.key.host_port),
                    p.key.proto,
                    Ipv4Addr::from(p.target.addr.to_ne_bytes()),
                    u16::from_be(p.target.port),
                )
            })
            .collect();
        assert_eq!(
            pubs,
            [
                (
                    Ipv4Addr::UNSPECIFIED,
                    8080,
                    IPPROTO_TCP,
                    Ipv4Addr::new(172, 18, 0, 2),
                    80
                ),
                (
                    Ipv4Addr::new(203, 0, 113, 2),
                    5353,
                    IPPROTO_UDP,
                    Ipv4Addr::new(172, 18, 0, 2),
                    53
                ),
            ]
        );
        assert_eq!(s.skipped.len(), 2, "{:?}", s.skipped);
        assert!(s.skipped[0].contains("sctp"), "{:?}", s.skipped);
        assert!(s.skipped[1].starts_with("db: 5432"), "{:?}", s.skipped);
    }

    /// An `--ipv6` network: its IPv6 subnet, a container's IPv6 address, and a port bound on
    /// `::` published on the uplink's IPv6 address to it.
    #[test]
    fn ipv6_networks_and_their_published_ports() {
        let networks: Vec<ApiNetwork> = serde_json::from_str(
            r#"[{"Name":"dual","Id":"ffffffffffffffff","Driver":"bridge","EnableIPv6":true,
                 "IPAM":{"Config":[{"Subnet":"172.20.0.0/24"},{"Subnet":"fd00:dd::/64"}]}}]"#,
        )
        .unwrap();
        let containers: Vec<ContainerSummary> = serde_json::from_str(
            r#"[{"Id":"4444","Names":["/web6"],
                 "Ports":[{"IP":"0.0.0.0","PrivatePort":80,"PublicPort":8080,"Type":"tcp"},
                          {"IP":"::","PrivatePort":80,"PublicPort":8080,"Type":"tcp"}],
                 "NetworkSettings":{"Networks":{"dual":{"NetworkID":"ffffffffffffffff",
                    "EndpointID":"e9","IPAddress":"172.20.0.2",
                    "GlobalIPv6Address":"fd00:dd::2","MacAddress":"02:42:ac:14:00:02"}}}}]"#,
        )
        .unwrap();
        let s = reduce(&networks, &containers);
        assert_eq!(s.networks[0].subnets6[0].to_string(), "fd00:dd::/64");
        assert_eq!(
            s.endpoints[0].addr6,
            Some("fd00:dd::2".parse::<Ipv6Addr>().unwrap())
        );
        assert_eq!(s.publishes.len(), 1);
        assert_eq!(s.publishes6.len(), 1);
        let p = s.publishes6[0];
        assert_eq!(
            (u16::from_be(p.key.host_port), u16::from_be(p.target.port)),
            (8080, 80)
        );
        assert_eq!(
            p.target.addr,
            addr6_to_map("fd00:dd::2".parse::<Ipv6Addr>().unwrap().octets())
        );
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("02:42:ac:12:00:0a"),
            Some([2, 0x42, 0xac, 0x12, 0, 10])
        );
        for bad in [
            "",
            "02:42:ac:12:00",
            "02:42:ac:12:00:0a:01",
            "zz:42:ac:12:00:0a",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
