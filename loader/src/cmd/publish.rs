//! `bpfnat publish add|list|remove`: published ports (Docker's `-p`) of a running instance.

use crate::{
    bpf::instance::PinnedMaps,
    table::{
        publish::{self, Flows, PublishSpec},
        publish6::{self, Flows6, Publish6Spec},
    },
};

/// What to do; specs as given (one argument, or the host and the container part).
pub enum Action {
    Add(Vec<String>),
    Remove(Vec<String>),
    List,
}

pub fn run(name: &str, json: bool, action: &Action) -> anyhow::Result<()> {
    // A bracketed address: a port on the uplink's IPv6 address.
    let ipv6 = match action {
        Action::Add(args) | Action::Remove(args) => args.iter().any(|a| Publish6Spec::is_ipv6(a)),
        Action::List => false,
    };
    if ipv6 {
        return run6(name, json, action);
    }
    // Parsed before opening anything, so bad input fails the same way everywhere.
    let spec = match action {
        Action::Add(args) => {
            let s = PublishSpec::from_args(args)?;
            if s.target.is_none() {
                anyhow::bail!(
                    "bad publish spec {:?}: no container address; expected {}",
                    args.join(" "),
                    publish::SYNTAX
                );
            }
            Some(s)
        }
        Action::Remove(args) => Some(PublishSpec::from_args(args)?),
        Action::List => None,
    };
    let mut maps = PinnedMaps::open(name)?;
    match (action, spec) {
        (Action::Add(_), Some(spec)) => {
            maps.served()?.check(&spec)?;
            let (mut map, tables, hairpin) = maps.publish_mut()?;
            let mut flows = Flows { tables, hairpin };
            let r = publish::add(&mut map, Some(&mut flows), &spec)?;
            if json {
                super::print_json(&serde_json::json!({
                    "spec": spec.to_string(),
                    "added": r.added,
                    "changed": r.changed,
                    "unchanged": r.unchanged,
                    "connections_removed": r.connections_removed,
                }));
            } else if r.added + r.changed == 0 {
                println!("{spec}: already published");
            } else if r.changed > 0 {
                println!(
                    "published {spec} ({} host ports re-targeted, {} connections to the old \
                     target removed)",
                    r.changed, r.connections_removed
                );
            } else {
                println!("published {spec}");
            }
        }
        (Action::Remove(_), Some(spec)) => {
            let (mut map, tables, hairpin) = maps.publish_mut()?;
            let mut flows = Flows { tables, hairpin };
            let r = publish::remove(&mut map, &mut flows, &spec)?;
            if json {
                super::print_json(&serde_json::json!({
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
            let specs6 = Publish6Spec::from_entries(&maps.publishes6()?);
            if json {
                super::print_json(&serde_json::Value::Array(
                    specs
                        .iter()
                        .map(PublishSpec::to_json)
                        .chain(specs6.iter().map(Publish6Spec::to_json))
                        .collect(),
                ));
            } else {
                let text: String = specs
                    .iter()
                    .map(|s| format!("{s}\n"))
                    .chain(specs6.iter().map(|s| format!("{s}\n")))
                    .collect();
                super::write_stdout(&text)?;
            }
        }
    }
    Ok(())
}

/// `publish add|remove` of a port on the uplink's IPv6 address.
fn run6(name: &str, json: bool, action: &Action) -> anyhow::Result<()> {
    let args = match action {
        Action::Add(args) | Action::Remove(args) => args,
        Action::List => return Ok(()),
    };
    let joined = args.join(":");
    let spec = Publish6Spec::parse(&joined)?;
    let mut maps = PinnedMaps::open(name)?;
    let (mut map, tables, hairpin) = maps.publish6_mut()?;
    let mut flows = Flows6 { tables, hairpin };
    let (what, n, removed) = match action {
        Action::Add(_) => {
            let (n, removed) = publish6::add6(&mut map, &mut flows, &spec)?;
            ("published", n, removed)
        }
        _ => {
            let (n, removed) = publish6::remove6(&mut map, &mut flows, &spec)?;
            ("unpublished", n, removed)
        }
    };
    if json {
        super::print_json(&serde_json::json!({
            "spec": spec.to_string(),
            what: n,
            "connections_removed": removed,
        }));
    } else {
        println!("{what} {spec} ({n} host ports, {removed} connections removed)");
    }
    Ok(())
}
