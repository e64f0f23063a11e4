//! The documentation says what the code does today: the book's command-line reference is the
//! binaries' own (generated from clap), every flag a page or README shows exists on the command it
//! is shown with, every internal link of the book and README resolves, and no shipped file names
//! a machine-local path.
//!
//! `BEVRT_BLESS_DOCS=1` rewrites the generated reference pages instead of failing on them.

use bevrt_tests::{bin, workspace_root};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The generated reference pages, one per binary.
const REFERENCES: [(&str, &str); 2] = [
    ("bevrt", "docs/src/reference/cli-bevrt.md"),
    ("bevrt-tool", "docs/src/reference/cli-bevrt-tool.md"),
];

fn manual_markdown(binary: &str) -> String {
    let out = std::process::Command::new(bin(binary))
        .args(["manual", "--format", "markdown"])
        .output()
        .expect("run the binary");
    assert!(
        out.status.success(),
        "{binary} manual: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 manual")
}

#[test]
fn cli_reference_pages_are_generated_from_the_binaries() {
    let root = workspace_root();
    let bless = std::env::var_os("BEVRT_BLESS_DOCS").is_some();
    let mut stale = vec![];
    for (binary, page) in REFERENCES {
        let want = manual_markdown(binary);
        let path = root.join(page);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(want.as_str()) {
            continue;
        }
        if bless {
            std::fs::write(&path, &want).expect("write reference page");
        } else {
            stale.push(page);
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from `bevrt manual --format markdown` / `bevrt-tool manual --format \
         markdown`: regenerate with `BEVRT_BLESS_DOCS=1 cargo test --release -p bevrt-tests --test docs`"
    );
}

/// Every command path (`bevrt`, `bevrt run`, `bevrt-tool bundle init`) with its long flags, read
/// from the generated reference (which the test above keeps equal to the binaries).
fn command_flags(markdown: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut commands: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = None;
    for line in markdown.lines() {
        if let Some(name) = line.strip_prefix("## `").and_then(|l| l.strip_suffix('`')) {
            let flags = ["--help", "--version"].map(String::from).into();
            commands.insert(name.to_string(), flags);
            current = Some(name.to_string());
        } else if let (Some(cmd), Some(item)) = (&current, line.strip_prefix("* `")) {
            for word in item.split(['`', ' ', ',', '=', '<']) {
                if word.starts_with("--") && word.len() > 2 {
                    commands.get_mut(cmd).unwrap().insert(word.to_string());
                }
            }
        }
    }
    commands
}

/// Every file below `dir`, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![];
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for p in entries.flatten().map(|e| e.path()) {
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// The pages a reader sees: README and the book's sources.
fn documentation_files(root: &Path) -> Vec<PathBuf> {
    let pages = files_under(&root.join("docs/src"));
    let pages = pages
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"));
    std::iter::once(root.join("README.md"))
        .chain(pages)
        .collect()
}

/// Fail listing `found` (one line each) under `what`, unless it is empty.
fn assert_none(what: &str, found: &[String]) {
    assert!(found.is_empty(), "{what}:\n{}", found.join("\n"));
}

/// A page's lines, numbered from 1, each with whether it lies inside a fenced code block (the
/// fence lines themselves left out).
fn lines_with_fences(text: &str) -> impl Iterator<Item = (usize, &str, bool)> {
    let mut fenced = false;
    text.lines().enumerate().filter_map(move |(i, line)| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return None;
        }
        Some((i + 1, line, fenced))
    })
}

/// The command lines of a page: each line of a fenced code block, and each inline code span.
fn command_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = vec![];
    for (n, line, fenced) in lines_with_fences(text) {
        if fenced {
            lines.push((n, line.to_string()));
        } else {
            let spans = line.split('`').skip(1).step_by(2);
            lines.extend(spans.map(|s| (n, s.to_string())));
        }
    }
    lines
}

/// Flags used after `bevrt` / `bevrt-tool` on `line` that the command they follow does not have.
fn unknown_flags(line: &str, commands: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let line = line.split(" #").next().unwrap_or("");
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let mut wrong = vec![];
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].trim_matches(|c| c == '(' || c == ')' || c == '"' || c == '\'');
        let binary = t.rsplit('/').next().unwrap_or(t);
        i += 1;
        if binary != "bevrt" && binary != "bevrt-tool" {
            continue;
        }
        if tokens.get(i) == Some(&"--") {
            i += 1; // `cargo run --bin bevrt -- demo`
        }
        let mut path = binary.to_string();
        while let Some(word) = tokens.get(i) {
            match commands.get(&format!("{path} {word}")) {
                Some(_) => {
                    path = format!("{path} {word}");
                    i += 1;
                }
                None => break,
            }
        }
        let flags = &commands[&path];
        while let Some(word) = tokens.get(i) {
            if ["|", "&&", ";", "||", ">", "2>&1"].contains(word) || word.ends_with(';') {
                break;
            }
            let flag = word.split('=').next().unwrap_or(word);
            let flag = flag.trim_end_matches([',', ')', '`', '.', ']', '"', '\'']);
            if flag.starts_with("--") && flag.len() > 2 && !flags.contains(flag) {
                wrong.push(format!("`{path}` has no {flag}"));
            }
            i += 1;
        }
    }
    wrong
}

#[test]
fn documented_flags_exist() {
    let root = workspace_root();
    let mut commands = BTreeMap::new();
    for (_, page) in REFERENCES {
        let text = std::fs::read_to_string(root.join(page)).expect("generated reference page");
        commands.extend(command_flags(&text));
    }
    assert!(commands.contains_key("bevrt run") && commands.contains_key("bevrt-tool bundle init"));
    let mut wrong = vec![];
    for file in documentation_files(&root) {
        if REFERENCES.iter().any(|(_, page)| root.join(page) == file) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read page");
        for (n, line) in command_lines(&text) {
            for w in unknown_flags(&line, &commands) {
                wrong.push(format!(
                    "{}:{n}: {w}",
                    file.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert_none("documented flags that do not exist", &wrong);
}

#[test]
fn the_flag_check_catches_a_missing_flag() {
    let mut commands = BTreeMap::new();
    commands.insert("bevrt".to_string(), BTreeSet::from(["--help".to_string()]));
    commands.insert(
        "bevrt run".to_string(),
        BTreeSet::from(["--bundle".to_string()]),
    );
    assert!(unknown_flags("bevrt run --bundle B", &commands).is_empty());
    assert_eq!(
        unknown_flags(
            "cargo run --bin bevrt -- run --bundle=B --no-such",
            &commands
        ),
        ["`bevrt run` has no --no-such"]
    );
    assert!(unknown_flags("bevrt run --bundle B | grep --count x", &commands).is_empty());
}

/// The anchor mdBook gives a heading: lower case, spaces to '-', other punctuation dropped.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    lines_with_fences(text)
        .filter(|&(_, line, fenced)| !fenced && line.starts_with('#'))
        .map(|(_, line, _)| anchor_of(line.trim_start_matches('#')))
        .collect()
}

/// The targets of `[text](target)` links outside code.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut out = vec![];
    for (n, line, fenced) in lines_with_fences(text) {
        if fenced {
            continue;
        }
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        for part in prose.split("](").skip(1) {
            if let Some(end) = part.find(')') {
                out.push((n, part[..end].to_string()));
            }
        }
    }
    out
}

#[test]
fn internal_links_resolve() {
    let root = workspace_root();
    let mut broken = vec![];
    for file in documentation_files(&root) {
        let text = std::fs::read_to_string(&file).expect("read page");
        for (n, target) in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let ok = match std::fs::read_to_string(&dest) {
                Ok(t) => anchor.is_empty() || anchors(&t).contains(anchor),
                Err(_) => dest.is_dir() && anchor.is_empty(),
            };
            if !ok {
                broken.push(format!(
                    "{}:{n}: {target}",
                    file.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert_none("broken internal links", &broken);
}

#[test]
fn every_book_page_is_in_the_summary() {
    let root = workspace_root();
    let summary = std::fs::read_to_string(root.join("docs/src/SUMMARY.md")).unwrap();
    let listed: BTreeSet<PathBuf> = link_targets(&summary)
        .into_iter()
        .map(|(_, t)| root.join("docs/src").join(t))
        .collect();
    let orphans: Vec<_> = documentation_files(&root)
        .into_iter()
        .filter(|f| f.starts_with(root.join("docs/src")) && !f.ends_with("SUMMARY.md"))
        .filter(|f| !listed.contains(f))
        .collect();
    assert!(
        orphans.is_empty(),
        "pages mdBook would not build (not in SUMMARY.md): {orphans:?}"
    );
}

/// Byte patterns of machine-local absolute paths.
const MACHINE_PATHS: [&str; 5] = ["/tmp/", "/home/", "/root/", "/work/", "/Users/"];

#[test]
fn shipped_files_name_no_machine_paths() {
    let root = workspace_root();
    let mut files = documentation_files(&root);
    files.extend(files_under(&root.join("models/bundles")));
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("letsmap-lite-1pct/encoder.onnx"))
    );
    let mut found = vec![];
    for file in files {
        let bytes = std::fs::read(&file).expect("read shipped file");
        for pattern in MACHINE_PATHS {
            if let Some(at) = bytes
                .windows(pattern.len())
                .position(|w| w == pattern.as_bytes())
            {
                let end = (at + 60).min(bytes.len());
                found.push(format!(
                    "{}: {}",
                    file.strip_prefix(&root).unwrap().display(),
                    String::from_utf8_lossy(&bytes[at..end])
                        .lines()
                        .next()
                        .unwrap_or("")
                ));
            }
        }
    }
    assert_none("machine-local paths in shipped files", &found);
}
