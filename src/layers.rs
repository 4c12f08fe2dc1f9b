//! Keeps ARCHITECTURE.md's "Levels" true: no module imports from a level above its own.
//!
//! The levels are read from ARCHITECTURE.md itself, so the picture and this check cannot drift:
//! the section's first table lists the modules of `src/`, lowest level first; a subsection
//! "### Inside `m`" lists the files of module `m` the same way. Every `src/**/*.rs` is read
//! (the library; `main.rs` and `src/bin/` reach it as `hookrelay::`), comments and literals
//! are blanked, and each path from `crate::` or `super::` is found: in `use` declarations,
//! grouped (`crate::{a, b::c}`) or spread over lines, and in code; `super` is resolved from
//! the module it is written in, inline modules (`mod tests { … }`) counted. A file of module
//! `m` may name only modules of `m`'s level or below; inside a module with its own levels, a
//! file may name (`super::f`, `crate::m::f`) only files of its level or below. The module's
//! `mod.rs`, which declares its files and holds the types they share, and its `tests` are
//! outside those.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The heading of the section of ARCHITECTURE.md that lists the levels.
const SECTION: &str = "## Levels";
/// The heading of a subsection that lists the levels of one module's files.
const INSIDE: &str = "### Inside `";

/// Name → level (the number in the first cell of its row).
type Levels = BTreeMap<String, usize>;

/// What ARCHITECTURE.md lists: the levels of the crate's modules, and of some modules' files.
#[derive(Debug, Default)]
struct Picture {
    modules: Levels,
    inside: BTreeMap<String, Levels>,
}

/// Where a path starts: `crate`, or `super` n times over.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Start {
    Crate,
    Super(usize),
}

/// One path found in code (a group's members each one path): where it starts, its names, the
/// line of its last name, and how deep in inline modules (`mod tests { … }`) of its file it is.
#[derive(Debug, PartialEq)]
struct Found {
    start: Start,
    names: Vec<String>,
    line: usize,
    depth: usize,
}

impl Found {
    fn shown(&self) -> String {
        let start = match self.start {
            Start::Crate => "crate".to_owned(),
            Start::Super(n) => vec!["super"; n].join("::"),
        };
        format!("{start}::{}", self.names.join("::"))
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// This module's own name (it is no part of the picture).
fn own_name() -> &'static str {
    module_path!().rsplit("::").next().unwrap_or_default()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// Reads the "Levels" section: one table row per level, its number in the first cell and the
/// modules in backticks in the second (`` | 0 | `time`, `sign` | … | ``), lowest first.
fn picture(text: &str) -> Result<Picture, String> {
    let mut picture = Picture::default();
    let mut in_section = false;
    let mut scope: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("## ") {
            in_section = line.trim() == SECTION;
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some(rest) = line.strip_prefix(INSIDE) {
            let name = rest.split('`').next().unwrap_or_default().to_owned();
            scope = Some(name);
            continue;
        }
        let cells: Vec<&str> = line.trim().split('|').map(str::trim).collect();
        // "| level | … |" rows: ["", "level", "modules", …, ""]; the header and the rule row
        // have no number in their first cell.
        let Some(level) = cells.get(1).and_then(|cell| cell.parse::<usize>().ok()) else {
            continue;
        };
        let levels = match &scope {
            None => &mut picture.modules,
            Some(module) => picture.inside.entry(module.clone()).or_default(),
        };
        for name in cells.get(2).unwrap_or(&"").split('`').skip(1).step_by(2) {
            if levels.insert(name.to_owned(), level).is_some() {
                return Err(format!("{name} is listed twice in {SECTION}"));
            }
        }
    }
    if picture.modules.is_empty() {
        return Err(format!("ARCHITECTURE.md has no table under {SECTION:?}"));
    }
    Ok(picture)
}

/// `text` with comments and the contents of string and character literals blanked (newlines
/// kept, so lines stay where they were).
fn code_of(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
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
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('"' | '#')) && starts_literal(&chars[..i]) {
            // A raw string: r"…", r#"…"# (or br…).
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
            let end = (j + 1..chars.len())
                .find(|&k| chars[k] == '"' && (1..=hashes).all(|h| chars.get(k + h) == Some(&'#')));
            let end = end.map_or(chars.len(), |k| k + 1 + hashes);
            out.extend(chars[i..end].iter().map(|&c| blank(c)));
            i = end;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                let skip = if chars[i] == '\\' { 2 } else { 1 };
                for &c in chars.iter().skip(i).take(skip) {
                    out.push(blank(c));
                }
                i += skip;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A character literal ('x', '\n', '\''); a lifetime ('a) is code.
            let end = if next == Some('\\') {
                (i + 3..chars.len())
                    .find(|&k| chars[k] == '\'')
                    .unwrap_or(chars.len())
            } else {
                i + 2
            };
            out.extend(
                chars[i..=end.min(chars.len() - 1)]
                    .iter()
                    .map(|&c| blank(c)),
            );
            i = end + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether a literal's prefix letter after `before` starts one (`r"`, `br"`), rather than
/// ending an identifier (`for"`, never valid anyway).
fn starts_literal(before: &[char]) -> bool {
    match before {
        [.., p, 'b'] => !is_ident(*p),
        [.., p] => !is_ident(*p),
        [] => true,
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The offset past `::` (and whitespace before it) at `at`, or `None`.
fn past_colons(code: &[char], at: usize) -> Option<usize> {
    let i = skip_space(code, at);
    (code.get(i) == Some(&':') && code.get(i + 1) == Some(&':')).then_some(i + 2)
}

fn skip_space(code: &[char], mut i: usize) -> usize {
    while code.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    i
}

/// The identifier at `at` (after whitespace), with its offset and the offset past it.
fn ident(code: &[char], at: usize) -> (String, usize, usize) {
    let start = skip_space(code, at);
    let end = (start..code.len())
        .find(|&k| !is_ident(code[k]))
        .unwrap_or(code.len());
    (code[start..end].iter().collect(), start, end)
}

/// Expands the path that goes on at `at` (just past a `::`) after `names`: each member of a
/// group (`{a, b::{c, d}}`) is a path of its own. Each path with the offset of its last name.
fn expand(code: &[char], at: usize, names: &[String], out: &mut Vec<(Vec<String>, usize)>) {
    let start = skip_space(code, at);
    if code.get(start) != Some(&'{') {
        let (name, name_at, end) = ident(code, start);
        if name.is_empty() {
            // `*`, or the end of the path
            out.push((names.to_vec(), start));
            return;
        }
        let names = [names, &[name]].concat();
        match past_colons(code, end) {
            Some(next) => expand(code, next, &names, out),
            None => out.push((names, name_at)),
        }
        return;
    }
    // The members of the group: split at its own commas.
    let mut depth = 0;
    let mut member = start + 1;
    for (i, &c) in code.iter().enumerate().skip(start) {
        match c {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                if !code[member..i].iter().all(|c| c.is_whitespace()) {
                    expand(code, member, names, out);
                }
                member = i + 1;
                if c == '}' {
                    return;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
}

/// For each offset of `code`, how many inline modules (`mod name { … }`) enclose it.
fn inline_depths(code: &[char]) -> Vec<usize> {
    let mut depths = Vec::with_capacity(code.len());
    let mut braces: Vec<bool> = Vec::new();
    let mut depth = 0;
    for (i, &c) in code.iter().enumerate() {
        if c == '{' {
            let is_module = opens_module(&code[..i]);
            braces.push(is_module);
            depth += usize::from(is_module);
        } else if c == '}' && braces.pop() == Some(true) {
            depth -= 1;
        }
        depths.push(depth);
    }
    depths
}

/// Whether `before` ends in `mod name` (whitespace aside).
fn opens_module(before: &[char]) -> bool {
    fn trimmed(s: &[char]) -> &[char] {
        let end = s
            .iter()
            .rposition(|c| !c.is_whitespace())
            .map_or(0, |k| k + 1);
        &s[..end]
    }
    let before = trimmed(before);
    let name_start = before
        .iter()
        .rposition(|&c| !is_ident(c))
        .map_or(0, |k| k + 1);
    if name_start == before.len() {
        return false;
    }
    let rest = trimmed(&before[..name_start]);
    rest.ends_with(&['m', 'o', 'd']) && (rest.len() == 3 || !is_ident(rest[rest.len() - 4]))
}

/// Every path in `code` (comments and literals blanked) that starts with `crate::` or `super::`
/// (`$crate` and a `super` inside a path are no such start).
fn paths(code: &str) -> Vec<Found> {
    let chars: Vec<char> = code.chars().collect();
    let depths = inline_depths(&chars);
    let mut line_starts = vec![0];
    line_starts.extend(
        chars
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c == '\n')
            .map(|(i, _)| i + 1),
    );
    let line_of = |offset: usize| line_starts.partition_point(|&start| start <= offset);
    let mut found = Vec::new();
    for at in 0..chars.len() {
        if chars[..at]
            .last()
            .is_some_and(|&p| is_ident(p) || p == '$' || p == ':')
        {
            continue;
        }
        if chars[at].is_whitespace() {
            continue;
        }
        let (word, _, end) = ident(&chars, at);
        let mut next = match past_colons(&chars, end) {
            Some(next) if word == "crate" || word == "super" => next,
            _ => continue, // `pub(crate)`, or not a path
        };
        let start = if word == "crate" {
            Start::Crate
        } else {
            let mut n = 1;
            loop {
                let (name, _, end) = ident(&chars, next);
                match past_colons(&chars, end) {
                    Some(after) if name == "super" => {
                        n += 1;
                        next = after;
                    }
                    _ => break Start::Super(n),
                }
            }
        };
        let mut expanded = Vec::new();
        expand(&chars, next, &[], &mut expanded);
        for (names, offset) in expanded {
            found.push(Found {
                start,
                names,
                line: line_of(offset),
                depth: depths[at],
            });
        }
    }
    found
}

/// The library's source files under `dir`, relative to `src/`.
fn sources(src: &Path, dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .and_then(|entries| entries.map(|entry| entry.map(|e| e.path())).collect())
        .unwrap_or_else(|err| panic!("listing {}: {err}", dir.display()));
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(src, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path.strip_prefix(src).unwrap_or(&path).to_owned());
        }
    }
}

/// The modules of `src/`: each `x.rs`, and each folder with a `mod.rs` or an `x.rs` beside it.
fn modules(src: &Path) -> Vec<String> {
    let entries: Vec<PathBuf> = fs::read_dir(src)
        .and_then(|entries| entries.map(|entry| entry.map(|e| e.path())).collect())
        .unwrap_or_else(|err| panic!("listing src: {err}"));
    let mut names = Vec::new();
    for path in entries {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let module = if path.is_dir() {
            path.join("mod.rs").exists() || src.join(format!("{stem}.rs")).exists()
        } else {
            path.extension().is_some_and(|e| e == "rs")
                && !["lib", "main", own_name()].contains(&stem.as_str())
        };
        if module && !names.contains(&stem) {
            names.push(stem);
        }
    }
    names.sort();
    names
}

/// The module path of the file at `file` (relative to `src/`): `config/mod.rs` is `config`,
/// `config/tests/load.rs` is `config::tests::load`. `None` outside the library.
fn module_path_of(file: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = file
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned()
        })
        .collect();
    if parts.last().is_some_and(|last| last == "mod") {
        parts.pop();
    }
    let outside = match parts.as_slice() {
        [only] => ["lib", "main", own_name()].contains(&only.as_str()),
        [first, ..] => first == "bin",
        [] => true,
    };
    (!outside).then_some(parts)
}

/// Each import from above its level, as "file:line: path: why".
fn violations(src: &Path, picture: &Picture) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let Some(module) = module_path_of(&file) else {
            continue;
        };
        let shown_file = format!("src/{}", file.display());
        let top = module[0].as_str();
        let Some(&own) = picture.modules.get(top) else {
            found.push(format!("{shown_file}: module {top} is not in {SECTION}"));
            continue;
        };
        // Inside a module with levels of its own: the file of it this one is (or is in).
        let inside = picture.inside.get(top).zip(module.get(1));
        let inside = inside.filter(|(_, name)| *name != "tests");
        if let Some((levels, name)) = inside
            && !levels.contains_key(name)
        {
            found.push(format!(
                "{shown_file}: {name} is not listed under {INSIDE}{top}`"
            ));
            continue;
        }
        for path in paths(&code_of(&read(&src.join(&file)))) {
            // The path from the crate's root: `super` climbs from the module the path is in.
            let base = match path.start {
                Start::Crate => 0,
                Start::Super(n) => (module.len() + path.depth).saturating_sub(n),
            };
            let names: Vec<&str> = match base {
                0 => path.names.iter().map(String::as_str).collect(),
                1 => [top]
                    .into_iter()
                    .chain(path.names.iter().map(String::as_str))
                    .collect(),
                _ => continue, // within a file's own items
            };
            let Some(&reached) = names.first() else {
                continue;
            };
            let line = format!("{shown_file}:{}: {}", path.line, path.shown());
            if reached != top {
                match picture.modules.get(reached) {
                    Some(&level) if level <= own => {}
                    Some(&level) => found.push(format!(
                        "{line}: {top} (level {own}) imports {reached} (level {level})"
                    )),
                    None => found.push(format!("{line}: {reached} is not a module in {SECTION}")),
                }
                continue;
            }
            if let (Some((levels, name)), Some(&file_reached)) = (inside, names.get(1))
                && file_reached != name
                && let (Some(&own), Some(&level)) = (levels.get(name), levels.get(file_reached))
                && level > own
            {
                found.push(format!(
                    "{line}: {name} (level {own} in {top}) imports {file_reached} (level {level})"
                ));
            }
        }
    }
    found
}

#[test]
fn imports_run_only_downward() {
    let root = root();
    let picture =
        picture(&read(&root.join("ARCHITECTURE.md"))).unwrap_or_else(|err| panic!("{err}"));
    let src = root.join("src");

    let modules = modules(&src);
    let unlisted: Vec<&String> = modules
        .iter()
        .filter(|m| !picture.modules.contains_key(*m))
        .collect();
    let stale: Vec<&String> = picture
        .modules
        .keys()
        .filter(|m| !modules.contains(m))
        .collect();
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "ARCHITECTURE.md's {SECTION} must list every module of src/: missing {unlisted:?}, \
         not modules {stale:?}"
    );
    for (module, levels) in &picture.inside {
        let folder = src.join(module);
        for name in levels.keys() {
            assert!(
                folder.join(format!("{name}.rs")).exists(),
                "{INSIDE}{module}` lists {name}, which is not a file of src/{module}/"
            );
        }
    }

    let found = violations(&src, &picture);
    assert!(
        found.is_empty(),
        "imports from a higher level (ARCHITECTURE.md, {SECTION}):\n{}",
        found.join("\n")
    );
}

#[test]
fn paths_are_found_grouped_spread_and_in_expressions_only() {
    let text = r#"use crate::{a, b::c};
use crate::{
    d::{self, E},
    f,
};
let s = "crate::g"; // crate::h
/* crate::i */ let c = '"'; let x = crate::j::k();
macro_rules! m { () => { $crate::l } }
pub(crate) fn n<'a>(x: &'a str) -> &'a str { crate :: o::p(x) }
mod tests { use super::super::q::*; fn r() { super::s(); } }
"#;
    let found: Vec<(usize, String, usize)> = paths(&code_of(text))
        .iter()
        .map(|f| (f.line, f.shown(), f.depth))
        .collect();
    let expected = [
        (1, "crate::a", 0),
        (1, "crate::b::c", 0),
        (3, "crate::d::self", 0),
        (3, "crate::d::E", 0),
        (4, "crate::f", 0),
        (7, "crate::j::k", 0),
        (9, "crate::o::p", 0),
        (10, "super::super::q", 1),
        (10, "super::s", 1),
    ];
    let expected: Vec<(usize, String, usize)> = expected
        .iter()
        .map(|&(line, shown, depth)| (line, shown.to_owned(), depth))
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn an_upward_import_is_named_with_its_file_and_line() {
    let text = "## Levels\n\n| level | modules |\n|---|---|\n| 0 | `time` |\n| 1 | `config` |\n\
                \n### Inside `config`\n\n| level | files |\n|---|---|\n| 0 | `problem` |\n\
                | 1 | `document` |\n\n## Next\n\n| 9 | `ignored` |\n";
    let picture = picture(text).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(picture.modules.get("time"), Some(&0));
    assert_eq!(picture.modules.get("config"), Some(&1));
    assert_eq!(picture.modules.get("ignored"), None);
    let inside = picture.inside.get("config").map(|l| l.get("document"));
    assert_eq!(inside, Some(Some(&1)));

    let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().unwrap_or(dir.path())).unwrap_or_default();
        fs::write(path, text).unwrap_or_else(|err| panic!("{err}"));
    };
    write("time.rs", "\nuse crate::{\n    config::Config,\n};\n");
    write(
        "config/mod.rs",
        "mod document;\nmod problem;\nuse crate::time;\n",
    );
    write("config/problem.rs", "use super::{Rate, document::read};\n");
    write(
        "config/document.rs",
        "use super::problem;\nuse crate::config::problem::x;\n",
    );
    assert_eq!(
        violations(dir.path(), &picture),
        [
            "src/config/problem.rs:1: super::document::read: problem (level 0 in config) \
             imports document (level 1)",
            "src/time.rs:3: crate::config::Config: time (level 0) imports config (level 1)",
        ]
    );
}
