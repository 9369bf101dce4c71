//! A test of the layering the crate documentation states: reads every source file, finds the
//! modules each one uses, and fails on an upward use or an import cycle.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// The layers, bottom first.
const LAYERS: [&str; 6] = ["util", "host", "bpf", "table", "daemon", "cmd"];

/// Every `use crate::...;` path of `text` with its braces expanded, and every inline
/// `crate::a::b` path, as lists of segments (comments ignored).
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut paths = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        // The path runs to the end of its expression: `;`, or the brace group's end.
        let mut depth = 0usize;
        let mut end = rest.len();
        for (k, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = k;
                    break;
                }
                '}' => depth -= 1,
                ';' | '(' | ' ' | '\n' | ')' | '>' | '<' | '&' | '=' | '!' | '.' | '['
                    if depth == 0 =>
                {
                    end = k;
                    break;
                }
                _ => {}
            }
        }
        expand(&rest[..end], &mut Vec::new(), &mut paths);
        rest = &rest[end..];
    }
    paths
}

/// `a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e.
fn expand(expr: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let expr = expr.trim().trim_end_matches("::");
    if let Some(open) = expr.find('{') {
        let head: Vec<String> = expr[..open]
            .split("::")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let inner = &expr[open + 1..expr.rfind('}').unwrap_or(expr.len())];
        let n = prefix.len();
        prefix.extend(head);
        let mut depth = 0;
        let mut start = 0;
        for (k, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..k], prefix, out);
                    start = k + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], prefix, out);
        prefix.truncate(n);
    } else if !expr.is_empty() {
        let mut p = prefix.clone();
        p.extend(expr.split("::").map(|s| s.trim().to_owned()));
        out.push(p);
    }
}

/// Module (`layer::module`) -> the modules of this crate it uses.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for layer in LAYERS {
        for entry in fs::read_dir(src.join(layer)).expect("layer folder") {
            let path = entry.expect("dir entry").path();
            let module = path.file_stem().and_then(|s| s.to_str()).expect("name");
            if module == "mod" {
                continue;
            }
            let text = fs::read_to_string(&path).expect("source file");
            let uses: BTreeSet<String> = crate_paths(&text)
                .into_iter()
                .filter(|p| p.len() >= 2 && LAYERS.contains(&p[0].as_str()))
                .map(|p| format!("{}::{}", p[0], p[1]))
                .filter(|m| *m != format!("{layer}::{module}"))
                .collect();
            graph.insert(format!("{layer}::{module}"), uses);
        }
    }
    graph
}

fn rank(module: &str) -> usize {
    let layer = module.split("::").next().unwrap_or("");
    LAYERS
        .iter()
        .position(|l| *l == layer)
        .unwrap_or(usize::MAX)
}

#[test]
fn use_paths_are_expanded() {
    let text = "use crate::{\n    bpf::{datapath::{A, B}, instance},\n    util::addr::X, // crate::cmd::y\n};\nlet t = crate::table::conntrack::list(&x);";
    let got: Vec<String> = crate_paths(text).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        got,
        [
            "bpf::datapath::A",
            "bpf::datapath::B",
            "bpf::instance",
            "util::addr::X",
            "table::conntrack::list"
        ]
    );
}

/// No module uses a module of a layer above its own, and no modules use each other, directly
/// or around a cycle.
#[test]
fn layers_point_down_and_modules_form_no_cycle() {
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.len() > 15, "too few modules found: {graph:?}");
    let mut upward = Vec::new();
    for (module, uses) in &graph {
        for used in uses {
            assert!(
                graph.contains_key(used),
                "{module} uses unknown module {used}"
            );
            if rank(used) > rank(module) {
                upward.push(format!("{module} -> {used}"));
            }
        }
    }
    assert!(upward.is_empty(), "modules using a layer above: {upward:?}");
    // Depth-first search for a back edge.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, bool>,
        stack: &mut Vec<&'a str>,
    ) {
        match state.get(m) {
            Some(true) => return,
            Some(false) => panic!("import cycle: {} -> {m}", stack.join(" -> ")),
            None => {}
        }
        state.insert(m, false);
        stack.push(m);
        for used in &graph[m] {
            visit(used, graph, state, stack);
        }
        stack.pop();
        state.insert(m, true);
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        visit(m, &graph, &mut state, &mut Vec::new());
    }
}
