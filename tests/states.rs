//! `wsup states`: the diagram is explored from the machine, stable, names every state and
//! the key transitions, and the copy in docs/architecture.md is the machine's own.

use std::process::Command;
use wsup::states::{explore, render, DiagramFormat};

const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/architecture.md");
const BEGIN: &str = "<!-- wsup states: begin -->";
const END: &str = "<!-- wsup states: end -->";
const STATES: [&str; 6] = [
    "Idle",
    "Dialing",
    "RefreshingToken",
    "Backoff",
    "Connected",
    "Terminated",
];

fn has_edge(mermaid: &str, from: &str, to: &str, event: &str, condition: Option<&str>) -> bool {
    mermaid.lines().map(str::trim).any(|line| {
        line.starts_with(&format!("{from} --> {to} : "))
            && line.contains(event)
            && condition.is_none_or(|c| line.contains(c))
    })
}

#[test]
fn output_is_deterministic() {
    let first = render(DiagramFormat::Mermaid);
    assert_eq!(first, render(DiagramFormat::Mermaid));
    assert_eq!(render(DiagramFormat::Dot), render(DiagramFormat::Dot));
    // Sorted edges, no duplicates.
    let edges = explore().edges;
    let mut sorted = edges.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(edges, sorted);
}

#[test]
fn every_difference_in_behaviour_is_explained_by_a_drawn_condition() {
    let ambiguities = explore().ambiguities;
    assert!(
        ambiguities.is_empty(),
        "the machine decides on something src/states.rs's FEATURES does not name:\n{}",
        ambiguities.join("\n")
    );
}

#[test]
fn mermaid_names_every_state_with_its_superstates() {
    let mermaid = render(DiagramFormat::Mermaid);
    assert!(mermaid.starts_with("stateDiagram-v2\n"), "{mermaid}");
    for state in STATES {
        assert!(
            mermaid.lines().any(|l| l.trim() == state),
            "{state} missing:\n{mermaid}"
        );
    }
    // Running ⊃ Offline ⊃ Dialing, RefreshingToken, Backoff; Running ⊃ Connected.
    let diagram = explore();
    let chain = |name: &str| {
        diagram
            .states
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, chain)| chain.clone())
            .unwrap_or_else(|| panic!("{name} not explored"))
    };
    for offline in ["Dialing", "RefreshingToken", "Backoff"] {
        assert_eq!(chain(offline), ["Offline", "Running"]);
    }
    assert_eq!(chain("Connected"), ["Running"]);
    assert!(chain("Idle").is_empty());
    assert!(chain("Terminated").is_empty());
    assert!(mermaid.contains("    state Running {\n        state Offline {\n"));
    assert!(mermaid.contains("    [*] --> Idle\n"));
    assert!(mermaid.contains("    Terminated --> [*]\n"));
}

#[test]
fn mermaid_has_the_key_transitions_with_their_conditions() {
    let m = render(DiagramFormat::Mermaid);
    let expected: [(&str, &str, &str, Option<&str>); 13] = [
        ("Idle", "Dialing", "start", None),
        (
            "Idle",
            "RefreshingToken",
            "start",
            Some("refreshable credentials, token expiring"),
        ),
        ("Dialing", "Connected", "dial_succeeded", None),
        (
            "Dialing",
            "Backoff",
            "dial_failed(transient)",
            Some("retries left"),
        ),
        (
            "Dialing",
            "Terminated",
            "dial_failed(transient)",
            Some("retries exhausted"),
        ),
        ("Dialing", "Terminated", "dial_failed(permanent)", None),
        (
            "Connected",
            "Backoff",
            "closed(transient)",
            Some("retries left, not closing"),
        ),
        (
            "Connected",
            "RefreshingToken",
            "closed(authentication)",
            Some("refreshable credentials, not refreshed in streak"),
        ),
        (
            "Connected",
            "Terminated",
            "closed(authentication)",
            Some("static credentials"),
        ),
        ("Connected", "Terminated", "closed(permission)", None),
        ("Backoff", "Dialing", "timer(backoff)", Some("resume dial")),
        ("RefreshingToken", "Dialing", "refresh_ok", None),
        ("Offline", "Terminated", "user_interrupt", None),
    ];
    for (from, to, event, condition) in expected {
        assert!(
            has_edge(&m, from, to, event, condition),
            "no {from} --> {to} on {event} [{condition:?}]:\n{m}"
        );
    }
    // Any running state ends on a signal: one edge from the superstate.
    assert!(
        has_edge(&m, "Running", "Terminated", "sigint, sigterm", None),
        "{m}"
    );
    // Connected forwards Ctrl+C: no transition, so no user_interrupt edge leaves it.
    assert!(
        !has_edge(&m, "Connected", "Terminated", "user_interrupt", None),
        "{m}"
    );
    // Terminated is absorbing: nothing leaves it.
    assert!(!explore().edges.iter().any(|e| e.from == "Terminated"));
}

#[test]
fn dot_is_a_digraph_with_clusters() {
    let dot = render(DiagramFormat::Dot);
    assert!(dot.starts_with("digraph wsup {\n"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
    let mut depth = 0i32;
    for c in dot.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        assert!(depth >= 0, "unbalanced braces:\n{dot}");
    }
    assert_eq!(depth, 0, "unbalanced braces:\n{dot}");
    assert!(dot.contains("subgraph cluster_Running {"));
    assert!(dot.contains("subgraph cluster_Offline {"));
    assert!(dot.contains("Dialing -> Connected [label=\"dial_succeeded\"];"));
    // Validate with graphviz when it is installed; it is not required.
    let Ok(mut child) = Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dot.as_bytes())
        .expect("write to dot");
    let output = child.wait_with_output().expect("dot runs");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "dot rejected the graph: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_subcommand_prints_the_diagram() {
    let wsup = env!("CARGO_BIN_EXE_wsup");
    let out = Command::new(wsup).arg("states").output().expect("run wsup");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        render(DiagramFormat::Mermaid)
    );
    let out = Command::new(wsup)
        .args(["states", "--format", "dot"])
        .output()
        .expect("run wsup");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        render(DiagramFormat::Dot)
    );
    let out = Command::new(wsup)
        .args(["states", "--format", "png"])
        .output()
        .expect("run wsup");
    assert_eq!(out.status.code(), Some(2));
}

/// The diagram in docs/architecture.md is what the machine does. Refresh it with
/// `WSUP_BLESS=1 cargo test --test states`.
#[test]
fn architecture_md_embeds_the_machines_diagram() {
    let docs = std::fs::read_to_string(DOCS).expect("read docs/architecture.md");
    let (Some(begin), Some(end)) = (docs.find(BEGIN), docs.find(END)) else {
        panic!("docs/architecture.md has no `{BEGIN}` … `{END}` section");
    };
    let inside = &docs[begin + BEGIN.len()..end];
    let wanted = format!("\n```mermaid\n{}```\n", render(DiagramFormat::Mermaid));
    if inside == wanted {
        return;
    }
    if std::env::var_os("WSUP_BLESS").is_some() {
        let updated = format!("{}{wanted}{}", &docs[..begin + BEGIN.len()], &docs[end..]);
        std::fs::write(DOCS, updated).expect("write docs/architecture.md");
        return;
    }
    panic!(
        "the state diagram in docs/architecture.md is not what the machine does any more; \
         refresh it with:\n\n    WSUP_BLESS=1 cargo test --test states\n\n\
         (it is `cargo run -- states` between the markers). Now:\n{wanted}"
    );
}
