//! The glob grammar and matcher, by example and against a naive reference matcher; and what a
//! filter keeps.

use proptest::prelude::*;

use super::*;

fn glob(text: &str) -> PathGlob {
    PathGlob::parse(text).unwrap_or_else(|rule| panic!("{text}: {rule}"))
}

#[test]
fn a_double_star_matches_the_folder_itself_and_everything_under_it() {
    let g = glob("/invoices/**");
    for path in ["/invoices", "/invoices/a.pdf", "/invoices/2026/03/a.pdf"] {
        assert!(g.matches(path), "{path}");
    }
    for path in [
        "/invoices-old",
        "/invoicesx/a.pdf",
        "/other/invoices/a.pdf",
        "/",
    ] {
        assert!(!g.matches(path), "{path}");
    }
}

#[test]
fn a_star_stays_within_one_segment() {
    let g = glob("/reports/*.pdf");
    assert!(g.matches("/reports/q1.pdf"));
    assert!(g.matches("/reports/.pdf"));
    assert!(!g.matches("/reports/2026/q1.pdf"));
    assert!(!g.matches("/reports/q1.pdf.txt"));
    assert!(!g.matches("/reports"));
    let g = glob("/*/b");
    assert!(g.matches("/a/b"));
    assert!(!g.matches("/a/x/b"));
}

#[test]
fn a_double_star_in_the_middle_matches_zero_or_more_segments() {
    let g = glob("/a/**/b/*.txt");
    for path in [
        "/a/b/x.txt",
        "/a/1/b/x.txt",
        "/a/1/2/b/x.txt",
        "/a/b/b/x.txt",
    ] {
        assert!(g.matches(path), "{path}");
    }
    for path in ["/a/x.txt", "/a/b", "/a/1/b/c/x.txt", "/b/x.txt"] {
        assert!(!g.matches(path), "{path}");
    }
    assert!(glob("/**").matches("/anything/at/all"));
    assert!(glob("/**/*.pdf").matches("/top.pdf"));
    assert!(glob("/**/*.pdf").matches("/deep/down/x.PDF"));
}

#[test]
fn matching_ignores_case_on_both_sides() {
    assert!(glob("/Invoices/**").matches("/invoices/A.pdf"));
    assert!(glob("/invoices/*.PDF").matches("/INVOICES/Scan.pdf"));
    assert!(glob("/Ärger/*").matches("/ärger/x"));
}

#[test]
fn bad_globs_are_refused_with_the_rule() {
    for (text, rule) in [
        ("", "must start with \"/\""),
        ("invoices/**", "must start with \"/\""),
        ("/", "empty segment"),
        ("/a//b", "empty segment"),
        ("/a/", "empty segment"),
        ("/a**", "whole segment"),
        ("/**b/c", "whole segment"),
        ("/a/***", "whole segment"),
    ] {
        match PathGlob::parse(text) {
            Ok(g) => panic!("{text:?} was accepted as {g:?}"),
            Err(err) => assert!(err.contains(rule), "{text:?}: {err}"),
        }
    }
}

#[test]
fn event_types_parse_by_their_names_only() {
    assert_eq!(ChangeType::parse("DELETED"), Ok(ChangeType::Deleted));
    assert_eq!(ChangeType::parse("UNKNOWN"), Ok(ChangeType::Unknown));
    assert!(ChangeType::parse("deleted").is_err());
    assert!(ChangeType::parse("MOVED").is_err());
}

#[test]
fn a_filter_needs_a_matching_path_and_type_and_lets_unknown_through() {
    let filter = ChangeFilter {
        paths: Some(vec![glob("/in/**")]),
        event_types: Some(vec![ChangeType::Created, ChangeType::Updated]),
    };
    assert!(filter.keeps("CREATED", &["/in/a"]));
    assert!(!filter.keeps("DELETED", &["/in/a"]));
    assert!(!filter.keeps("CREATED", &["/out/a"]));
    // A move: either path will do.
    assert!(filter.keeps("UPDATED", &["/in/a", "/out/a"]));
    assert!(filter.keeps("UPDATED", &["/out/a", "/in/a"]));
    assert!(filter.keeps("UNKNOWN", &[""]));
    assert!(ChangeFilter::default().keeps("DELETED", &["/x"]));
    assert!(ChangeFilter::default().keeps_all());
    assert!(!filter.keeps_all());
}

/// The grammar read literally, character by character, with backtracking everywhere.
fn reference(pattern: &[char], path: &[char]) -> bool {
    let any_depth = pattern.len() >= 3
        && pattern[..3] == ['/', '*', '*']
        && pattern.get(3).is_none_or(|c| *c == '/');
    if any_depth {
        // Zero segments, or one more segment and still `/**`.
        if reference(&pattern[3..], path) {
            return true;
        }
        return path.first() == Some(&'/') && {
            let end = path[1..]
                .iter()
                .position(|c| *c == '/')
                .map_or(path.len(), |i| i + 1);
            reference(pattern, &path[end..])
        };
    }
    match pattern.first() {
        None => path.is_empty(),
        Some('*') => {
            reference(&pattern[1..], path)
                || (path.first().is_some_and(|c| *c != '/') && reference(pattern, &path[1..]))
        }
        Some(c) => path.first() == Some(c) && reference(&pattern[1..], &path[1..]),
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("**".to_owned()),
        "[aB]{1,3}",
        "[aB]{0,2}\\*[aB]{0,2}",
        "\\*[ab]\\*",
    ]
}

proptest! {
    #[test]
    fn the_matcher_agrees_with_the_reference(
        pattern in prop::collection::vec(segment(), 1..5),
        path in prop::collection::vec("[abAB]{1,3}", 1..6),
    ) {
        let pattern = format!("/{}", pattern.join("/"));
        let path = format!("/{}", path.join("/"));
        let g = glob(&pattern);
        let lower = |s: &str| s.to_lowercase().chars().collect::<Vec<char>>();
        prop_assert_eq!(
            g.matches(&path),
            reference(&lower(&pattern), &lower(&path)),
            "{} against {}", pattern, path
        );
    }
}
