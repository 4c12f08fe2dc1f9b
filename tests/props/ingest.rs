//! `parse_accounts`: never panics on arbitrary bytes, and on generated JSON shapes agrees with a
//! reference reading of docs/protocol.md ("a `list_folder.accounts` array of strings"; a
//! team-shaped body is unrouted; anything else is 400).

use hookrelay::ingest::{Accounts, parse_accounts};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// docs/protocol.md's reading of a body, as a plain function over a JSON value.
fn reference(body: &Value) -> Accounts {
    let Some(list_folder) = body.as_object().and_then(|o| o.get("list_folder")) else {
        return Accounts::Invalid;
    };
    let Some(list_folder) = list_folder.as_object() else {
        return Accounts::Invalid;
    };
    match list_folder.get("accounts").filter(|a| !a.is_null()) {
        Some(Value::Array(items)) => {
            let mut unique: Vec<String> = Vec::new();
            for item in items {
                let Some(account) = item.as_str() else {
                    return Accounts::Invalid;
                };
                if !unique.iter().any(|u| u == account) {
                    unique.push(account.to_owned());
                }
            }
            Accounts::Listed(unique)
        }
        Some(_) => Accounts::Invalid,
        None if list_folder.get("teams").is_some_and(|t| !t.is_null()) => Accounts::Team,
        None => Accounts::Invalid,
    }
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z:]{0,8}".prop_map(Value::String),
        "dbid:[A-Za-z0-9_-]{1,6}".prop_map(Value::String),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Accounts arrays: mostly strings (with repeats), sometimes a stray non-string.
fn accounts() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => proptest::collection::vec(
            prop_oneof![Just("dbid:a".to_owned()), Just("dbid:b".to_owned()), "dbid:[A-Za-z0-9]{1,6}"],
            0..6,
        )
        .prop_map(|v| json!(v)),
        1 => proptest::collection::vec(leaf(), 0..4).prop_map(Value::Array),
        1 => leaf(),
        1 => any_json(),
    ]
}

/// Bodies shaped like Dropbox's, and near misses.
fn dropbox_like() -> impl Strategy<Value = Value> {
    let list_folder = (
        proptest::option::of(accounts()),
        proptest::option::of(any_json()),
        proptest::collection::btree_map("[a-z]{1,6}", any_json(), 0..2),
    )
        .prop_map(|(accounts, teams, extra)| {
            let mut o: Map<String, Value> = extra.into_iter().collect();
            if let Some(a) = accounts {
                o.insert("accounts".into(), a);
            }
            if let Some(t) = teams {
                o.insert("teams".into(), t);
            }
            Value::Object(o)
        });
    let top = (
        proptest::option::of(prop_oneof![4 => list_folder, 1 => any_json()]),
        proptest::option::of(any_json()),
        proptest::collection::btree_map("[a-z]{1,6}", any_json(), 0..2),
    )
        .prop_map(|(list_folder, delta, extra)| {
            let mut o: Map<String, Value> = extra.into_iter().collect();
            if let Some(lf) = list_folder {
                o.insert("list_folder".into(), lf);
            }
            if let Some(d) = delta {
                o.insert("delta".into(), d);
            }
            Value::Object(o)
        });
    prop_oneof![8 => top, 1 => any_json()]
}

proptest! {
    #![proptest_config(crate::cases(512, 50_000))]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_accounts(&body);
    }

    #[test]
    fn arbitrary_text_near_json_never_panics(body in r#"[\{\}\[\]":,a-z0-9 \\]{0,64}"#) {
        let _ = parse_accounts(body.as_bytes());
    }

    #[test]
    fn generated_shapes_agree_with_the_notification_format(body in dropbox_like(), pretty in any::<bool>()) {
        // Objects at every level that matters: serde's struct-from-array leniency is covered
        // by `a_top_level_array_is_not_a_notification` below.
        prop_assume!(body.is_object());
        prop_assume!(body.get("list_folder").is_none_or(|lf| !lf.is_array()));
        let text = if pretty {
            serde_json::to_string_pretty(&body).unwrap()
        } else {
            serde_json::to_string(&body).unwrap()
        };
        prop_assert_eq!(parse_accounts(text.as_bytes()), reference(&body), "body {}", text);
    }
}

#[test]
fn dropbox_examples_parse() {
    let body = br#"{"list_folder": {"accounts": ["dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc"]}, "delta": {"users": [12345]}}"#;
    assert_eq!(
        parse_accounts(body),
        Accounts::Listed(vec!["dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc".into()])
    );
    let team =
        br#"{"list_folder": {"teams": {"dbtid:AAA": ["dbmid:BBB"]}}, "delta": {"teams": {}}}"#;
    assert_eq!(parse_accounts(team), Accounts::Team);
    // Duplicate keys are not a notification.
    let twice =
        br#"{"list_folder": {"accounts": ["dbid:a"]}, "list_folder": {"accounts": ["dbid:b"]}}"#;
    assert_eq!(parse_accounts(twice), Accounts::Invalid);
}

/// serde reads a struct from a JSON array too, so `[{"accounts": […]}]` or
/// `{"list_folder": [["dbid:x"], null]}` (no `list_folder.accounts` key anywhere) are read as account
/// lists. Only bodies signed with the app secret get here, so this is leniency, not a hole, but
/// docs/protocol.md says such bodies are 400.
#[test]
fn a_top_level_array_is_not_a_notification() {
    assert_eq!(
        parse_accounts(br#"[{"accounts": ["dbid:x"]}]"#),
        Accounts::Invalid
    );
    assert_eq!(
        parse_accounts(br#"{"list_folder": [["dbid:x"], null]}"#),
        Accounts::Invalid
    );
}
