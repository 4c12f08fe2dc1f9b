//! The man pages and shell completions (`hookrelay generate …`, hidden; packaging/deb/build.sh
//! installs what it writes): generated from the command line, they name every command, and the
//! hidden command itself appears nowhere.

use std::path::Path;

use crate::support::cli::run;

/// Every visible command path below the top: `["run"]`, `["dead"]`, `["dead", "list"]`, …
fn command_paths() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            let mut path = prefix.to_vec();
            path.push(sub.get_name().to_owned());
            out.push(path.clone());
            walk(sub, &path, out);
        }
    }
    let mut out = Vec::new();
    walk(&hookrelay::cli::command(), &[], &mut out);
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn man_pages_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["generate", "man", dir.path().to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let paths = command_paths();
    assert!(paths.len() >= 11, "{paths:?}");

    let mut expected: Vec<String> = paths
        .iter()
        .map(|path| format!("hookrelay-{}.1", path.join("-")))
        .collect();
    expected.push("hookrelay.1".to_owned());
    expected.sort();
    let mut written: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, expected);

    // roff escapes the hyphens of the page names.
    let main = read(&dir.path().join("hookrelay.1")).replace("\\-", "-");
    assert!(main.contains("\n.TH hookrelay 1 "), "{main}");
    assert!(main.contains("hookrelay.toml(5)") || main.contains("hookrelay.toml\\fR(5)"));
    for path in paths.iter().filter(|path| path.len() == 1) {
        assert!(
            main.contains(&format!("hookrelay-{}(1)", path[0])),
            "hookrelay.1 does not name hookrelay-{}(1)",
            path[0]
        );
    }
    // A command's page names its subcommands' pages (`dead`, `events`).
    for path in paths.iter().filter(|path| path.len() == 2) {
        let parent = format!("hookrelay-{}.1", path[0]);
        let text = read(&dir.path().join(&parent)).replace("\\-", "-");
        let page = format!("hookrelay-{}(1)", path.join("-"));
        assert!(text.contains(&page), "{parent} does not name {page}");
    }
    for name in &written {
        let page = read(&dir.path().join(name));
        assert!(page.contains(".SH NAME"), "{name}: no NAME section");
        assert!(
            !page.contains("generate"),
            "{name} mentions the hidden command"
        );
    }
}

#[test]
fn completions_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["generate", "completions", dir.path().to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let paths = command_paths();
    for file in ["hookrelay.bash", "_hookrelay", "hookrelay.fish"] {
        let text = read(&dir.path().join(file));
        for path in &paths {
            let name = path.last().unwrap();
            assert!(
                text.contains(name.as_str()),
                "{file} does not complete {name}"
            );
        }
        for option in ["--config", "--log-format", "--include-secrets", "--since"] {
            assert!(
                text.contains(option) || text.contains(option.trim_start_matches('-')),
                "{file} does not complete {option}"
            );
        }
        assert!(
            !text.contains("generate"),
            "{file} completes the hidden command"
        );
    }
}

#[test]
fn generate_is_hidden_from_help() {
    let out = run(&["--help"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(!out.stdout.contains("generate"), "{}", out.stdout);
    let out = run(&["generate", "--help"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("completions"), "{}", out.stdout);
    let out = run(&["generate"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
}
