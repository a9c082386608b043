//! `wsup states`: the state diagram, derived from the machine itself. One job in about
//! 850 lines: the explorer, the feature names that label conditions, and the two
//! renderers (mermaid, dot) share the explored graph.
//!
//! Nothing here lists a transition. The machine is explored: starting at `Idle`, every
//! event kind (failures with a representative of each class) is fed to every reachable
//! state under every input the driver can set (credentials refreshable or static, token
//! expiring or not, output still pending or not), and what happens is recorded. A
//! concrete state is the machine's `State` with the data that cannot change what happens
//! next blanked out (the jittered backoff delay, the terminated outcome), so with
//! `max_retries = 1` the exploration is finite and ends. The concrete states are then
//! collapsed onto the diagram's names (`state_name`), and each edge gets the condition
//! that separates it from the other things the same event does in the same named state,
//! in terms of named features of the concrete state (guards, credentials, closing, ...).
//! The superstates come from statig's superstate chain.
//!
//! docs/architecture.md embeds the mermaid output; `tests/states.rs` fails when it is
//! stale.

use crate::backoff::{Backoff, BackoffPolicy, Jitter};
use crate::classify::{Failure, NetworkKind};
use crate::machine::{
    state_name, CredentialState, Event, Guards, Machine, MachineConfig, Outcome, Payload, Resume,
    Sig, State, Superstate, Supervision, TimerKind,
};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

/// How `wsup states` prints the diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiagramFormat {
    /// A mermaid `stateDiagram-v2` (renders on GitHub and in docs).
    Mermaid,
    /// A graphviz digraph (`wsup states --format dot | dot -Tsvg`).
    Dot,
}

/// The redial budget of the explored configuration: 1 is the smallest that shows both
/// "retries left" and "retries exhausted" while keeping the state space finite.
const EXPLORED_MAX_RETRIES: u32 = 1;

/// The diagram: states (in the order the exploration found them), their superstate
/// chains, and labelled edges, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagram {
    /// Every state name, in discovery order, with its superstates innermost first.
    pub states: Vec<(&'static str, Vec<&'static str>)>,
    pub edges: Vec<Edge>,
    /// Where the same event, in the same named state with the same features, led to
    /// different places: the machine decided on something this module's `FEATURES` do not name, so
    /// the conditions drawn would be incomplete. Empty for the current machine (a test
    /// checks); a new guard in the machine needs a feature here.
    pub ambiguities: Vec<String>,
}

/// One arrow: `from` is a state or a superstate (an edge every state inside it has).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub from: &'static str,
    pub to: &'static str,
    /// The events, e.g. `dial_failed(transient), closed(transient)`.
    pub events: String,
    /// The guard, e.g. `retries left, not closing`; empty when the event alone decides.
    pub condition: String,
}

impl Edge {
    pub fn label(&self) -> String {
        if self.condition.is_empty() {
            self.events.clone()
        } else {
            format!("{} [{}]", self.events, self.condition)
        }
    }
}

/// Explore the machine and print its diagram.
pub fn render(format: DiagramFormat) -> String {
    let diagram = explore();
    match format {
        DiagramFormat::Mermaid => diagram.mermaid(),
        DiagramFormat::Dot => diagram.dot(),
    }
}

// ---------------------------------------------------------------------------------------
// Events fed to every state.

/// How an event is named on an edge: `kind(class)`, refined to `kind rep (class)` only
/// where two representatives of the same class behave differently.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct EventLabel {
    kind: &'static str,
    class: Option<&'static str>,
    representative: &'static str,
}

struct Probe {
    label: EventLabel,
    event: Event,
}

fn close(code: u16, reason: &str) -> Failure {
    Failure::Close {
        code,
        reason: reason.into(),
    }
}

fn http(status: u16) -> Failure {
    Failure::Http {
        status,
        retry_after: None,
    }
}

fn network(kind: NetworkKind) -> Failure {
    Failure::Network {
        kind,
        detail: String::new(),
    }
}

fn refresh_error(status: Option<u16>, detail: &str) -> Failure {
    Failure::Refresh {
        status,
        detail: detail.into(),
        retry_after: None,
    }
}

/// The class of a failure as the machine's own rules see it (default rules).
fn class_of(failure: &Failure) -> &'static str {
    MachineConfig::default().rules.classify(failure).describe()
}

/// Every event kind, with representative failures of every class.
fn probes() -> Vec<Probe> {
    let mut probes = Vec::new();
    let mut plain = |kind: &'static str, event: Event| {
        probes.push(Probe {
            label: EventLabel {
                kind,
                class: None,
                representative: kind,
            },
            event,
        })
    };
    plain("start", Event::Start);
    plain("dial_succeeded", Event::DialSucceeded);
    for kind in TimerKind::ALL {
        plain(kind.name(), Event::Timer(kind));
    }
    plain("refresh_ok", Event::RefreshDone(Ok(())));
    plain("sigint", Event::Signal(Sig::Interrupt));
    plain("sigterm", Event::Signal(Sig::Terminate));
    plain("user_interrupt", Event::UserInterrupt);
    plain("local_eof", Event::LocalEof);
    plain("frame(text)", Event::Received(Payload::Text("x".into())));
    plain(
        "frame(binary)",
        Event::Received(Payload::Binary(vec![0].into())),
    );
    plain("frame(ping)", Event::PingReceived);
    plain("frame(pong)", Event::PongReceived);
    plain("local_gone", Event::LocalGone);
    plain("output_failed", Event::OutputFailed("disk full".into()));
    plain("reads_paused", Event::ReadsPaused);
    plain("reads_resumed", Event::ReadsResumed);

    let mut failing = |kind: &'static str, representative: &'static str, failure: Failure| {
        let class = Some(class_of(&failure));
        let event = match kind {
            "dial_failed" => Event::DialFailed(failure),
            "refresh_failed" => Event::RefreshDone(Err(failure)),
            "input_rejected" => Event::InputRejected(failure),
            _ => Event::Closed(failure),
        };
        probes.push(Probe {
            label: EventLabel {
                kind,
                class,
                representative,
            },
            event,
        });
    };
    for (representative, failure) in [
        ("401", http(401)),
        ("503", http(503)),
        ("404", http(404)),
        ("refused", network(NetworkKind::Refused)),
        ("timeout", network(NetworkKind::ConnectTimeout)),
        ("tls", Failure::Tls("certificate not trusted".into())),
        ("host not found", network(NetworkKind::HostNotFound)),
    ] {
        failing("dial_failed", representative, failure);
    }
    for (representative, failure) in [
        (
            "400 invalid_grant",
            refresh_error(Some(400), "invalid_grant"),
        ),
        ("503", refresh_error(Some(503), "")),
        ("no answer", refresh_error(None, "connection refused")),
        ("404", refresh_error(Some(404), "")),
    ] {
        failing("refresh_failed", representative, failure);
    }
    // The connection's end: a close of each class, an invalid close code, the network.
    let closes: [(&'static str, u16, &str); 10] = [
        ("1000", 1000, ""),
        ("1001", 1001, "going away"),
        ("1011", 1011, "internal error"),
        ("1008", 1008, "token expired"),
        ("1007 not authorized", 1007, "Not authorized to SHELL_EXEC"),
        ("1003", 1003, "unsupported data"),
        ("1002", 1002, "protocol error"),
        ("4000", 4000, "application error"),
        ("1016", 1016, ""),
        ("1005 no code", 1005, ""),
    ];
    for (representative, code, reason) in closes {
        failing("closed", representative, close(code, reason));
    }
    failing("closed", "reset", network(NetworkKind::Reset));
    failing(
        "input_rejected",
        "line too long",
        Failure::InputRejected("a stdin line is longer than --max-line".into()),
    );
    probes
}

// ---------------------------------------------------------------------------------------
// Features: the named facts about a concrete state and the driver's inputs that guards
// are written in. Ordered most telling first: when a condition can be said with fewer
// of them, the later ones are dropped first.

const FEATURES: [(&str, &str); 9] = [
    ("refreshable credentials", "static credentials"),
    ("refreshed in streak", "not refreshed in streak"),
    ("retries left", "retries exhausted"),
    ("resume refresh", "resume dial"),
    ("token expiring", "token not expiring"),
    ("closing", "not closing"),
    ("close sent", "close not sent"),
    ("output pending", "nothing unsent"),
    ("not yet stable", "stable"),
];

type Features = [bool; FEATURES.len()];

/// What the driver tells the machine before an event.
#[derive(Debug, Clone, Copy)]
struct Input {
    creds: CredentialState,
    outbound_pending: bool,
}

fn features(state: &State, input: &Input) -> Features {
    let none = Guards::default();
    let (guards, resume_refresh, closing, close_sent, unstable) = match state {
        State::Dialing { guards, .. } | State::RefreshingToken { guards, .. } => {
            (*guards, false, false, false, false)
        }
        State::Backoff { guards, resume, .. } => (
            *guards,
            matches!(resume, Resume::Refresh(_)),
            false,
            false,
            false,
        ),
        State::Connected {
            since_stable,
            closing,
            close_sent,
            guards,
        } => (*guards, false, *closing, *close_sent, !*since_stable),
        State::Idle {} | State::Terminated { .. } => (none, false, false, false, false),
    };
    [
        input.creds.refreshable,
        guards.refreshed_in_streak,
        // `retry_later` counts the failure first, then compares with the budget.
        guards.failures_in_streak < EXPLORED_MAX_RETRIES,
        resume_refresh,
        input.creds.expiring_soon,
        closing,
        close_sent,
        input.outbound_pending,
        unstable,
    ]
}

/// The concrete state with what cannot change the machine's behaviour blanked out.
fn concrete_key(state: &State) -> String {
    let mut state = state.clone();
    match &mut state {
        State::Backoff { delay, .. } => *delay = Duration::ZERO,
        State::Terminated { outcome } => *outcome = Outcome::Done,
        _ => {}
    }
    format!("{state:?}")
}

/// The superstates of a state, innermost first, from statig's superstate chain.
fn superstates(state: &State) -> Vec<&'static str> {
    use statig::blocking::Superstate as _;
    fn name(superstate: &Superstate) -> &'static str {
        match superstate {
            Superstate::Running {} => "Running",
            Superstate::Offline {} => "Offline",
        }
    }
    let mut state = state.clone();
    let mut chain = Vec::new();
    let mut current = statig::blocking::State::<Supervision>::superstate(&mut state);
    while let Some(mut superstate) = current {
        chain.push(name(&superstate));
        current = superstate.superstate().map(|s| match s {
            Superstate::Running {} => Superstate::Running {},
            Superstate::Offline {} => Superstate::Offline {},
        });
    }
    chain
}

// ---------------------------------------------------------------------------------------
// Exploration.

/// One thing that happened: in a named state with these features, this event led to
/// `to` (`None`: nothing that changes behaviour changed).
struct Observation {
    from: &'static str,
    features: Features,
    label: EventLabel,
    to: Option<&'static str>,
}

fn machine_config() -> MachineConfig {
    MachineConfig {
        max_retries: Some(EXPLORED_MAX_RETRIES),
        ..MachineConfig::default()
    }
}

/// A fresh machine brought to a state by replaying the path that first reached it (the
/// machine cannot be cloned: its jitter source is a closure).
fn machine_at(path: &[(Input, Event)]) -> Machine {
    let mut machine = Machine::new(
        machine_config(),
        Backoff::new(BackoffPolicy::default(), Jitter::seeded(0)),
    );
    for (input, event) in path {
        feed(&mut machine, input, event);
    }
    machine
}

fn feed(machine: &mut Machine, input: &Input, event: &Event) {
    machine.set_credentials(input.creds);
    machine.set_outbound_pending(input.outbound_pending);
    machine.handle(event.clone());
}

struct Exploration {
    observations: Vec<Observation>,
    /// State names in discovery order, with their superstates.
    states: Vec<(&'static str, Vec<&'static str>)>,
}

/// Breadth-first from `Idle` over every input combination in `inputs`.
fn explore_with(inputs: &[Input], probes: &[Probe], into: &mut Exploration) {
    let start = machine_at(&[]);
    let mut visited: HashSet<String> = HashSet::new();
    let mut queue: VecDeque<Vec<(Input, Event)>> = VecDeque::new();
    visited.insert(concrete_key(start.state()));
    note_state(into, start.state());
    queue.push_back(Vec::new());
    while let Some(path) = queue.pop_front() {
        let before = machine_at(&path);
        let from_key = concrete_key(before.state());
        for input in inputs {
            for probe in probes {
                let mut machine = machine_at(&path);
                let features = features(machine.state(), input);
                feed(&mut machine, input, &probe.event);
                let key = concrete_key(machine.state());
                let to = (key != from_key).then(|| state_name(machine.state()));
                into.observations.push(Observation {
                    from: state_name(before.state()),
                    features,
                    label: probe.label.clone(),
                    to,
                });
                if visited.insert(key) {
                    note_state(into, machine.state());
                    let mut next = path.clone();
                    next.push((*input, probe.event.clone()));
                    queue.push_back(next);
                }
            }
        }
    }
}

fn note_state(into: &mut Exploration, state: &State) {
    let name = state_name(state);
    if !into.states.iter().any(|(known, _)| *known == name) {
        into.states.push((name, superstates(state)));
    }
}

/// Explore with static credentials, then with refreshable ones, and derive the diagram.
pub fn explore() -> Diagram {
    let probes = probes();
    let mut exploration = Exploration {
        observations: Vec::new(),
        states: Vec::new(),
    };
    let inputs = |creds: &[CredentialState]| -> Vec<Input> {
        creds
            .iter()
            .flat_map(|creds| {
                [false, true].map(|outbound_pending| Input {
                    creds: *creds,
                    outbound_pending,
                })
            })
            .collect()
    };
    // A static token can expire too: the machine must not try to refresh it.
    for refreshable in [false, true] {
        let creds = [false, true].map(|expiring_soon| CredentialState {
            refreshable,
            expiring_soon,
        });
        explore_with(&inputs(&creds), &probes, &mut exploration);
    }
    derive(exploration, &probes)
}

// ---------------------------------------------------------------------------------------
// From observations to labelled edges.

type Literal = (usize, bool);

fn satisfies(features: &Features, conjunction: &[Literal]) -> bool {
    conjunction.iter().all(|(i, value)| features[*i] == *value)
}

/// The shortest conjunction of `features`' literals (dropping the least telling first)
/// that no vector in `others` satisfies.
fn separating_conjunction(features: &Features, others: &[Features]) -> Vec<Literal> {
    let mut conjunction: Vec<Literal> = features.iter().copied().enumerate().collect();
    let separates = |c: &[Literal]| !others.iter().any(|o| satisfies(o, c));
    for i in (0..FEATURES.len()).rev() {
        let without: Vec<Literal> = conjunction.iter().copied().filter(|l| l.0 != i).collect();
        if separates(&without) || !separates(&conjunction) {
            conjunction = without;
        }
    }
    conjunction
}

fn condition_text(conjunction: &[Literal]) -> String {
    conjunction
        .iter()
        .map(|(i, value)| {
            if *value {
                FEATURES[*i].0
            } else {
                FEATURES[*i].1
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One edge before superstates and event lists are folded in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RawEdge {
    from: &'static str,
    to: &'static str,
    label: EventLabel,
    /// Whether the label names the representative (its class behaves in more than one way).
    refined: bool,
    condition: String,
}

fn derive(exploration: Exploration, probes: &[Probe]) -> Diagram {
    // Group by named state and event class; refine a class to its representatives only
    // where the same features lead to different places (e.g. a close 1001 and a 1011
    // while closing with output pending).
    type Outcomes = BTreeMap<Features, BTreeSet<Option<&'static str>>>;
    let mut by_class: BTreeMap<(&str, &str, Option<&str>), Outcomes> = BTreeMap::new();
    for o in &exploration.observations {
        by_class
            .entry((o.from, o.label.kind, o.label.class))
            .or_default()
            .entry(o.features)
            .or_default()
            .insert(o.to);
    }
    let ambiguous = |o: &Observation| {
        by_class[&(o.from, o.label.kind, o.label.class)]
            .values()
            .any(|targets| targets.len() > 1)
    };
    let mut groups: BTreeMap<(&str, EventLabel, bool), Outcomes> = BTreeMap::new();
    for o in &exploration.observations {
        let refined = ambiguous(o);
        let label = if refined {
            o.label.clone()
        } else {
            EventLabel {
                representative: "",
                ..o.label.clone()
            }
        };
        groups
            .entry((o.from, label, refined))
            .or_default()
            .entry(o.features)
            .or_default()
            .insert(o.to);
    }
    let mut ambiguities = Vec::new();
    let mut raw = BTreeSet::new();
    for ((from, label, refined), outcomes) in &groups {
        for (features, targets) in outcomes {
            if targets.len() > 1 {
                let literals: Vec<Literal> = features.iter().copied().enumerate().collect();
                ambiguities.push(format!(
                    "{from} on {} {} [{}] goes to {targets:?}",
                    label.kind,
                    label.representative,
                    condition_text(&literals)
                ));
            }
        }
        let targets: BTreeSet<&str> = outcomes.values().flatten().flatten().copied().collect();
        for to in targets {
            let reaching: Vec<Features> = outcomes
                .iter()
                .filter(|(_, t)| t.contains(&Some(to)))
                .map(|(f, _)| *f)
                .collect();
            let others: Vec<Features> = outcomes
                .iter()
                .filter(|(_, t)| t.iter().any(|t| *t != Some(to)))
                .map(|(f, _)| *f)
                .collect();
            let mut candidates: Vec<Vec<Literal>> = reaching
                .iter()
                .map(|f| separating_conjunction(f, &others))
                .collect();
            candidates.sort_by_key(|c| (c.len(), c.clone()));
            candidates.dedup();
            // As few conditions as cover every source: greedily the one covering the most
            // sources not yet covered (ties: the shorter, then the first in order).
            let mut uncovered: Vec<Features> = reaching;
            while !uncovered.is_empty() {
                let Some(best) = candidates
                    .iter()
                    .max_by_key(|c| {
                        let covers = uncovered.iter().filter(|f| satisfies(f, c)).count();
                        (
                            covers,
                            std::cmp::Reverse(c.len()),
                            std::cmp::Reverse((*c).clone()),
                        )
                    })
                    .cloned()
                else {
                    break;
                };
                uncovered.retain(|f| !satisfies(f, &best));
                raw.insert(RawEdge {
                    from,
                    to,
                    label: label.clone(),
                    refined: *refined,
                    condition: condition_text(&best),
                });
            }
        }
    }
    let raw = fold_into_superstates(raw, &exploration.states);
    let edges = merge_events(raw, probes);
    Diagram {
        states: exploration.states,
        edges,
        ambiguities,
    }
}

/// An edge every state inside a superstate has, with the same event and condition, is
/// drawn once from the superstate (outermost first: a signal leaves all of `Running`).
fn fold_into_superstates(
    mut raw: BTreeSet<RawEdge>,
    states: &[(&'static str, Vec<&'static str>)],
) -> BTreeSet<RawEdge> {
    let mut superstates: Vec<(&str, usize)> = Vec::new();
    for (_, chain) in states {
        for (depth, s) in chain.iter().rev().enumerate() {
            if !superstates.iter().any(|(known, _)| known == s) {
                superstates.push((s, depth));
            }
        }
    }
    superstates.sort_by_key(|(name, depth)| (*depth, *name));
    for (superstate, _) in superstates {
        let members: Vec<&str> = states
            .iter()
            .filter(|(_, chain)| chain.contains(&superstate))
            .map(|(name, _)| *name)
            .collect();
        let Some(first) = members.first() else {
            continue;
        };
        let shared: Vec<RawEdge> = raw
            .iter()
            .filter(|e| e.from == *first)
            .filter(|e| {
                members.iter().all(|m| {
                    raw.contains(&RawEdge {
                        from: m,
                        ..(*e).clone()
                    })
                })
            })
            .cloned()
            .collect();
        for edge in shared {
            for m in &members {
                raw.remove(&RawEdge {
                    from: m,
                    ..edge.clone()
                });
            }
            raw.insert(RawEdge {
                from: superstate,
                ..edge
            });
        }
    }
    raw
}

/// One edge per (from, to, condition), its events listed; representatives of a class
/// that all go the same way are named by the class again.
fn merge_events(raw: BTreeSet<RawEdge>, probes: &[Probe]) -> Vec<Edge> {
    let mut merged: BTreeMap<(&str, &str, String), Vec<EventLabel>> = BTreeMap::new();
    let mut refined_labels: BTreeMap<(&str, &str, String), Vec<EventLabel>> = BTreeMap::new();
    for edge in raw {
        let key = (edge.from, edge.to, edge.condition);
        if edge.refined {
            refined_labels.entry(key).or_default().push(edge.label);
        } else {
            merged.entry(key).or_default().push(edge.label);
        }
    }
    let mut texts: BTreeMap<(&str, &str, String), Vec<String>> = BTreeMap::new();
    for (key, labels) in &merged {
        for label in labels {
            texts
                .entry(key.clone())
                .or_default()
                .push(class_text(label.kind, label.class));
        }
    }
    for (key, labels) in refined_labels {
        let mut by_class: BTreeMap<(&str, Option<&str>), BTreeSet<&str>> = BTreeMap::new();
        for label in &labels {
            by_class
                .entry((label.kind, label.class))
                .or_default()
                .insert(label.representative);
        }
        for ((kind, class), reps) in by_class {
            let all: BTreeSet<&str> = probes
                .iter()
                .filter(|p| p.label.kind == kind && p.label.class == class)
                .map(|p| p.label.representative)
                .collect();
            let text = if reps == all {
                class_text(kind, class)
            } else {
                let reps: Vec<&str> = reps.into_iter().collect();
                match class {
                    Some(class) => format!("{kind} {} ({class})", reps.join("/")),
                    None => format!("{kind} {}", reps.join("/")),
                }
            };
            texts.entry(key.clone()).or_default().push(text);
        }
    }
    let mut edges: Vec<Edge> = texts
        .into_iter()
        .map(|((from, to, condition), mut events)| {
            events.sort();
            events.dedup();
            Edge {
                from,
                to,
                events: events.join(", "),
                condition,
            }
        })
        .collect();
    edges.sort();
    edges
}

fn class_text(kind: &str, class: Option<&str>) -> String {
    match class {
        Some(class) => format!("{kind}({class})"),
        None => kind.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Output.

impl Diagram {
    /// The superstates, outermost first, each with its direct members (states and
    /// nested superstates), in discovery order.
    fn tree(&self) -> (Vec<&'static str>, BTreeMap<&'static str, Vec<&'static str>>) {
        let mut top = Vec::new();
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut add = |parent: Option<&'static str>, child: &'static str| {
            let list = match parent {
                Some(p) => children.entry(p).or_default(),
                None => &mut top,
            };
            if !list.contains(&child) {
                list.push(child);
            }
        };
        for (name, chain) in &self.states {
            // chain is innermost first: walk from the outermost superstate inwards.
            let mut parent = None;
            for s in chain.iter().rev() {
                add(parent, s);
                parent = Some(*s);
            }
            add(parent, name);
        }
        (top, children)
    }

    /// States no edge leaves: final.
    fn finals(&self) -> Vec<&'static str> {
        self.states
            .iter()
            .filter(|(name, chain)| {
                !self
                    .edges
                    .iter()
                    .any(|e| e.from == *name || chain.contains(&e.from))
            })
            .map(|(name, _)| *name)
            .collect()
    }

    pub fn mermaid(&self) -> String {
        let mut out = String::from("stateDiagram-v2\n");
        let (top, children) = self.tree();
        fn nest(out: &mut String, name: &str, children: &BTreeMap<&str, Vec<&str>>, depth: usize) {
            let indent = "    ".repeat(depth);
            match children.get(name) {
                Some(members) => {
                    let _ = writeln!(out, "{indent}state {name} {{");
                    for m in members {
                        nest(out, m, children, depth + 1);
                    }
                    let _ = writeln!(out, "{indent}}}");
                }
                None => {
                    let _ = writeln!(out, "{indent}{name}");
                }
            }
        }
        for name in &top {
            nest(&mut out, name, &children, 1);
        }
        if let Some((initial, _)) = self.states.first() {
            let _ = writeln!(out, "    [*] --> {initial}");
        }
        for edge in &self.edges {
            let _ = writeln!(out, "    {} --> {} : {}", edge.from, edge.to, edge.label());
        }
        for name in self.finals() {
            let _ = writeln!(out, "    {name} --> [*]");
        }
        out
    }

    pub fn dot(&self) -> String {
        let mut out = String::from(
            "digraph wsup {\n    compound=true;\n    rankdir=LR;\n    node [shape=box, style=rounded];\n",
        );
        let (top, children) = self.tree();
        fn nest(out: &mut String, name: &str, children: &BTreeMap<&str, Vec<&str>>, depth: usize) {
            let indent = "    ".repeat(depth);
            match children.get(name) {
                Some(members) => {
                    let _ = writeln!(out, "{indent}subgraph cluster_{name} {{");
                    let _ = writeln!(out, "{indent}    label=\"{name}\";");
                    for m in members {
                        nest(out, m, children, depth + 1);
                    }
                    let _ = writeln!(out, "{indent}}}");
                }
                None => {
                    let _ = writeln!(out, "{indent}{name};");
                }
            }
        }
        for name in &top {
            nest(&mut out, name, &children, 1);
        }
        let finals = self.finals();
        for name in &finals {
            let _ = writeln!(out, "    {name} [peripheries=2];");
        }
        // A cluster cannot be an edge's end in dot: the edge leaves one of its states and
        // is clipped at the cluster's border (`ltail`).
        let first_state_in = |superstate: &str| {
            self.states
                .iter()
                .find(|(_, chain)| chain.contains(&superstate))
                .map(|(name, _)| *name)
        };
        for edge in &self.edges {
            let label = edge.label().replace('"', "\\\"");
            match first_state_in(edge.from) {
                Some(inside) => {
                    let _ = writeln!(
                        out,
                        "    {inside} -> {} [ltail=cluster_{}, label=\"{label}\"];",
                        edge.to, edge.from
                    );
                }
                None => {
                    let _ = writeln!(out, "    {} -> {} [label=\"{label}\"];", edge.from, edge.to);
                }
            }
        }
        out.push_str("}\n");
        out
    }
}
