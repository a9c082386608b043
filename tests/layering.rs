//! The layers hold by construction: a plain scan of the sources (comments and string
//! literals left out) that fails when the sans-IO core imports IO, a clock or anything of
//! the crate above it, and when two top-level modules of `src/` import each other, directly
//! or around a loop. quinn-proto gets this guard rail from being its own crate; wsup gets it
//! from this test.
//!
//! The allowed stack (docs/architecture.md): `machine` → `classify`, `backoff`; `classify`
//! and `backoff` import nothing of the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// What the sans-IO core must not name, with the words a failure prints.
const IO_AND_CLOCKS: &[(&str, &str)] = &[
    ("tokio", "the async runtime (tokio)"),
    ("std::net", "the network (std::net)"),
    ("std::fs", "the file system (std::fs)"),
    ("Instant", "a clock (std::time::Instant)"),
    ("SystemTime", "a clock (std::time::SystemTime)"),
];

/// The websocket library, under either of its crate names.
const WEBSOCKET_LIBRARY: &[(&str, &str)] = &[
    (
        "tokio_tungstenite",
        "the websocket library (tokio_tungstenite)",
    ),
    ("tungstenite", "the websocket library (tungstenite)"),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The source files of the top-level module `name`: `src/name.rs` and everything under
/// `src/name/`.
fn module_files(name: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = src().join(format!("{name}.rs"));
    if file.is_file() {
        files.push(file);
    }
    collect_rs(&src().join(name), &mut files);
    assert!(!files.is_empty(), "no source for module {name}");
    files
}

fn collect_rs(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.map(|entry| entry.unwrap().path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect_rs(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// The top-level modules of the library: every `src/X.rs` and `src/X/` but the crate
/// roots.
fn top_level_modules() -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    for entry in fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        let name = if path.is_dir() {
            path.file_name().unwrap().to_string_lossy().into_owned()
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            path.file_stem().unwrap().to_string_lossy().into_owned()
        } else {
            continue;
        };
        if name != "lib" && name != "main" {
            modules.insert(name);
        }
    }
    modules
}

/// The code of a Rust source with comments, string literals and char literals blanked
/// out (replaced by spaces, newlines kept), so that a word in a doc comment or a message
/// does not count as an import.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !chars[..i]
                .last()
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"…", r#"…"#, …
            let mut hashes = 0;
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let closing: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let rest: String = chars[j + 1..].iter().collect();
            let len = rest.find(&closing).map_or(rest.chars().count(), |at| {
                rest[..at].chars().count() + closing.chars().count()
            });
            for &k in &chars[i..(j + 1 + len).min(chars.len())] {
                blank(&mut out, k);
            }
            i = j + 1 + len;
        } else if c == '"' {
            blank(&mut out, c);
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
            if i < chars.len() {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{7f}') or a lifetime ('a, 'static).
            let end = if next == Some('\\') {
                chars[i + 2..]
                    .iter()
                    .position(|&k| k == '\'')
                    .map(|at| i + 2 + at)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    for &k in &chars[i..=end] {
                        blank(&mut out, k);
                    }
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether `word` occurs in `code` as a whole path segment (`tokio` in `tokio::spawn`,
/// not in `tokio_tungstenite`).
fn mentions(code: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(word).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    }) || word
        .strip_prefix("std::")
        .is_some_and(|inner| std_group_names(code).contains(inner))
}

/// The names imported in `use std::{…}` groups (`net` in `use std::{fmt, net::TcpStream}`).
fn std_group_names(code: &str) -> BTreeSet<String> {
    group_heads(code, "std::")
}

/// The crate modules `code` names: `crate::X` paths and `crate::{X, Y::…}` groups.
fn crate_modules(code: &str) -> BTreeSet<String> {
    group_heads(code, "crate::")
}

/// After each `prefix` that starts a path (not inside a longer identifier): the next
/// segment, or each first segment of a `{…}` group.
fn group_heads(code: &str, prefix: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut heads = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = code[at + prefix.len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                    _ if depth == 0 => item.push(c),
                    _ => {}
                }
            }
            items.push(item);
            for item in items {
                let head: String = item.trim().chars().take_while(|&c| is_ident(c)).collect();
                if !head.is_empty() && head != "self" {
                    heads.insert(head);
                }
            }
        } else {
            let head: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !head.is_empty() {
                heads.insert(head);
            }
        }
    }
    heads
}

/// Each place in `module` that names one of `forbidden`, as "file:line: what". Files are
/// scanned whole, so that a `use` group over several lines counts too.
fn forbidden_names(module: &str, forbidden: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    for file in module_files(module) {
        let code = code_only(&fs::read_to_string(&file).unwrap());
        for (word, what) in forbidden {
            if mentions(&code, word) {
                found.push(format!("{}: {what}", place(&file, &code, word)));
            }
        }
    }
    found
}

/// Each crate module `module` names that it may not, as "file:line: crate::X".
fn forbidden_crate_modules(module: &str, allowed: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in module_files(module) {
        let code = code_only(&fs::read_to_string(&file).unwrap());
        for used in crate_modules(&code) {
            if used != module && !allowed.contains(&used.as_str()) {
                found.push(format!("{}: crate::{used}", place(&file, &code, &used)));
            }
        }
    }
    found
}

/// "src/file.rs:N", N the first line of `code` that holds `word` (the file alone when the
/// word only shows in a group over several lines).
fn place(file: &Path, code: &str, word: &str) -> String {
    let shown = file
        .strip_prefix(src().parent().unwrap())
        .unwrap()
        .display();
    let tail = word.rsplit("::").next().unwrap_or(word);
    match code
        .lines()
        .position(|line| mentions(line, word) || line.contains(tail))
    {
        Some(number) => format!("{shown}:{}", number + 1),
        None => shown.to_string(),
    }
}

fn assert_none(found: Vec<String>, rule: &str) {
    assert!(found.is_empty(), "{rule}:\n  {}", found.join("\n  "));
}

#[test]
fn the_machine_does_no_io_and_reads_no_clock() {
    assert_none(
        forbidden_names("machine", IO_AND_CLOCKS),
        "the machine is sans-IO: time and IO come in as events",
    );
    assert_none(
        forbidden_crate_modules("machine", &["classify", "backoff", "exit"]),
        "the machine imports only the policy below it (classify, backoff) and the exit codes",
    );
}

#[test]
fn the_machine_does_not_import_the_websocket_library() {
    assert_none(
        forbidden_names("machine", WEBSOCKET_LIBRARY),
        "the machine takes its own payload type, not the websocket library's",
    );
}

#[test]
fn the_policy_is_pure() {
    for module in ["classify", "backoff"] {
        assert_none(
            forbidden_names(module, IO_AND_CLOCKS),
            &format!("{module} is pure: no IO, no clock"),
        );
        assert_none(
            forbidden_names(module, WEBSOCKET_LIBRARY),
            &format!("{module} knows failures, not websocket frames"),
        );
        assert_none(
            forbidden_crate_modules(module, &["exit"]),
            &format!("{module} depends on nothing of the crate but the exit codes"),
        );
    }
}

/// Imports that close a cycle today and that a change in flight removes: (file, module).
/// Each is left out of the graph; once it is gone from the file, the cycle test fails until
/// it is deleted here too, so that the exception cannot outlive its reason. None today.
const PENDING: &[(&str, &str)] = &[];

/// The crate modules each top-level module of `src/` imports, without [`PENDING`].
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = top_level_modules();
    let root = src().parent().unwrap().to_path_buf();
    modules
        .iter()
        .map(|module| {
            let mut imports = BTreeSet::new();
            for file in module_files(module) {
                let code = code_only(&fs::read_to_string(&file).unwrap());
                let shown = file
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                imports.extend(crate_modules(&code).into_iter().filter(|used| {
                    used != module
                        && modules.contains(used)
                        && !PENDING.contains(&(shown.as_str(), used.as_str()))
                }));
            }
            (module.clone(), imports)
        })
        .collect()
}

/// One import cycle of `graph`, as the modules around it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_owned(), Mark::OnPath);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next.as_str()).copied().unwrap_or(Mark::Unvisited) {
                Mark::OnPath => {
                    let start = path.iter().position(|n| n == next).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::Unvisited => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node.as_str()).copied().unwrap_or(Mark::Unvisited) == Mark::Unvisited {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    for (file, module) in PENDING {
        let path = src().parent().unwrap().join(file);
        let still = fs::read_to_string(&path)
            .is_ok_and(|source| crate_modules(&code_only(&source)).contains(*module));
        assert!(
            still,
            "{file} no longer imports crate::{module}: delete its entry in PENDING"
        );
    }
    let graph = module_graph();
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between modules of src/: {}\nthe whole graph: {graph:#?}",
            cycle.join(" → ")
        );
    }
}

// The scanner itself, so that a guard that sees nothing cannot pass for a guard that holds.

#[test]
fn the_scanner_ignores_comments_and_strings_only() {
    let code = code_only(
        "use crate::classify::Failure; // crate::driver\n/* tokio::spawn /* nested */ std::fs */\nlet s = \"std::net and crate::cli\"; let r = r#\"SystemTime\"#; let c = '\"'; fn f<'a>(x: &'a str) {}\nuse std::time::Instant;",
    );
    assert_eq!(
        crate_modules(&code),
        BTreeSet::from(["classify".to_owned()])
    );
    assert!(!mentions(&code, "tokio"));
    assert!(!mentions(&code, "std::fs"));
    assert!(!mentions(&code, "std::net"));
    assert!(!mentions(&code, "SystemTime"));
    assert!(mentions(&code, "Instant"), "{code}");
}

#[test]
fn the_scanner_sees_every_way_of_naming_a_module() {
    let code = "use crate::{backoff::Backoff, classify::{self, Failure}};\nuse std::{fmt, net::TcpStream};\nlet x = crate::transport::MAX;\nuse tokio_tungstenite::tungstenite::Message;";
    assert_eq!(
        crate_modules(code),
        ["backoff", "classify", "transport"]
            .map(str::to_owned)
            .into_iter()
            .collect()
    );
    assert!(mentions(code, "std::net"));
    assert!(!mentions(code, "std::fs"));
    assert!(mentions(code, "tungstenite"));
    assert!(mentions(code, "tokio_tungstenite"));
    assert!(!mentions(code, "tokio"), "tokio_tungstenite is not tokio");
}

#[test]
fn a_cycle_is_found_and_a_stack_is_not() {
    let graph = |edges: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            graph
                .entry((*from).to_owned())
                .or_default()
                .insert((*to).to_owned());
            graph.entry((*to).to_owned()).or_default();
        }
        graph
    };
    let stack = graph(&[
        ("cli", "driver"),
        ("driver", "machine"),
        ("machine", "classify"),
        ("cli", "classify"),
    ]);
    assert_eq!(find_cycle(&stack), None);
    let looped = graph(&[("a", "b"), ("b", "c"), ("c", "a")]);
    assert_eq!(
        find_cycle(&looped),
        Some(["a", "b", "c", "a"].map(str::to_owned).to_vec())
    );
}
