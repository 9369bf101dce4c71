//! `bpfnat conntrack list|flush|delete`: the connection table of a running instance, as
//! conntrack(8) shows it.

use crate::{
    bpf::instance::PinnedMaps,
    table::{
        conntrack::{self, Filter},
        conntrack6,
        timeouts::monotonic_ns,
    },
};

pub enum Action {
    List(Filter),
    Flush,
    /// At least one criterion.
    Delete(Filter),
}

pub fn run(name: &str, json: bool, action: &Action) -> anyhow::Result<()> {
    // Checked before opening anything, so bad input fails the same way everywhere.
    if let Action::Delete(filter) = action {
        if filter.is_empty() {
            anyhow::bail!(
                "conntrack delete needs at least one filter (--proto, --src, --dst, --sport, \
                 --dport); `conntrack flush` deletes everything"
            );
        }
    }
    let mut maps = PinnedMaps::open(name)?;
    let timeouts = maps.config()?.timeouts;
    let (mut tables, mut tables6) = maps.all_tables()?;
    let now = monotonic_ns();
    match action {
        Action::List(filter) => {
            let conns: Vec<_> = conntrack::list(&tables, &timeouts, now)
                .into_iter()
                .filter(|c| filter.matches(c))
                .collect();
            let conns6: Vec<_> = conntrack6::list6(&tables6, &timeouts, now)
                .into_iter()
                .filter(|c| c.matches(filter))
                .collect();
            if json {
                super::print_json(&serde_json::Value::Array(
                    conns
                        .iter()
                        .map(conntrack::Connection::to_json)
                        .chain(conns6.iter().map(conntrack6::Connection6::to_json))
                        .collect(),
                ));
            } else {
                let text: String = conns
                    .iter()
                    .map(|c| c.line() + "\n")
                    .chain(conns6.iter().map(|c| c.line() + "\n"))
                    .collect();
                if !super::write_stdout(&text)? {
                    return Ok(());
                }
                eprintln!(
                    "bpfnat conntrack ({name}): {} flow entries have been shown.",
                    conns.len() + conns6.len()
                );
            }
        }
        Action::Flush => {
            let mut report = conntrack::flush(&mut tables, &timeouts, now);
            report.mappings += conntrack6::remove6_where(&mut tables6, &timeouts, now, |_| true);
            if json {
                super::print_json(&serde_json::json!({
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
        Action::Delete(filter) => {
            let n = conntrack::delete(&mut tables, &timeouts, now, filter)?
                + conntrack6::remove6_where(&mut tables6, &timeouts, now, |c| c.matches(filter));
            if json {
                super::print_json(&serde_json::json!({ "deleted": n }));
            } else {
                println!("bpfnat conntrack ({name}): {n} flow entries have been deleted.");
            }
        }
    }
    Ok(())
}
