//! The one thing hookrelay reads from a Dropbox notification body: `list_folder.accounts`.
//! `delta` is optional and ignored; the body is stored and forwarded verbatim.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

/// What a signed body says about accounts.
#[derive(Debug, PartialEq, Eq)]
pub enum Accounts {
    /// `list_folder.accounts`: the account ids, duplicates removed, in order.
    Listed(Vec<String>),
    /// A team-shaped body (`list_folder.teams`, no `accounts`): not routed.
    Team,
    /// Not JSON, or no `list_folder.accounts` array of strings.
    Invalid,
}

/// The body's `list_folder` object, if it has one.
struct Body {
    list_folder: Option<ListFolder>,
}

/// What `list_folder` holds: its accounts, and whether it names teams.
struct ListFolder {
    accounts: Option<Vec<String>>,
    teams: bool,
}

pub fn parse_accounts(body: &[u8]) -> Accounts {
    let Ok(Body {
        list_folder: Some(list_folder),
    }) = serde_json::from_slice::<Body>(body)
    else {
        return Accounts::Invalid;
    };
    match (list_folder.accounts, list_folder.teams) {
        (Some(accounts), _) => {
            let mut unique: Vec<String> = Vec::with_capacity(accounts.len());
            for account in accounts {
                if !unique.contains(&account) {
                    unique.push(account);
                }
            }
            Accounts::Listed(unique)
        }
        (None, true) => Accounts::Team,
        (None, false) => Accounts::Invalid,
    }
}

// Both types are read in one pass with hand-written visitors rather than derived ones: a derived
// struct also accepts a JSON array, and a body must be an object whose `list_folder` is an
// object. Duplicate keys are refused, as a derived struct refuses them.

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut list_folder = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "list_folder" {
                if list_folder.is_some() {
                    return Err(de::Error::duplicate_field("list_folder"));
                }
                list_folder = Some(map.next_value::<ListFolder>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Body { list_folder })
    }
}

impl<'de> Deserialize<'de> for ListFolder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ListFolderVisitor)
    }
}

struct ListFolderVisitor;

impl<'de> Visitor<'de> for ListFolderVisitor {
    type Value = ListFolder;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ListFolder, A::Error> {
        let mut accounts = None;
        let mut teams = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "accounts" if accounts.is_some() => {
                    return Err(de::Error::duplicate_field("accounts"));
                }
                "accounts" => accounts = Some(map.next_value::<Option<Vec<String>>>()?),
                "teams" if teams.is_some() => return Err(de::Error::duplicate_field("teams")),
                "teams" => teams = Some(map.next_value::<Option<IgnoredAny>>()?.is_some()),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(ListFolder {
            accounts: accounts.flatten(),
            teams: teams.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_read_and_shapes_told_apart() {
        let body = br#"{"list_folder": {"accounts": ["dbid:a", "dbid:b", "dbid:a"]}, "delta": {"users": [1]}}"#;
        assert_eq!(
            parse_accounts(body),
            Accounts::Listed(vec!["dbid:a".into(), "dbid:b".into()])
        );
        assert_eq!(
            parse_accounts(br#"{"list_folder": {"accounts": []}}"#),
            Accounts::Listed(vec![])
        );
        assert_eq!(
            parse_accounts(br#"{"list_folder": {"teams": {"dbtid:x": ["dbmid:y"]}}}"#),
            Accounts::Team
        );
        assert_eq!(
            parse_accounts(br#"{"delta": {"users": [12345]}}"#),
            Accounts::Invalid
        );
        assert_eq!(
            parse_accounts(br#"{"list_folder": {"accounts": [1]}}"#),
            Accounts::Invalid
        );
        assert_eq!(parse_accounts(b"not json"), Accounts::Invalid);
        assert_eq!(
            parse_accounts(br#"{"list_folder": {"accounts": "dbid:a"}}"#),
            Accounts::Invalid
        );
    }

    #[test]
    fn only_objects_without_duplicate_keys_are_read() {
        for body in [
            &br#"[{"accounts": ["dbid:a"]}]"#[..],
            br#"{"list_folder": [["dbid:a"], null]}"#,
            br#"{"list_folder": {"accounts": ["dbid:a"]}, "list_folder": {"accounts": ["dbid:b"]}}"#,
            br#"{"list_folder": {"accounts": ["dbid:a"], "accounts": ["dbid:b"]}}"#,
            br#"{"list_folder": {"accounts": null}}"#,
            br#"{"list_folder": {"teams": null}}"#,
            br#"{"list_folder": {"accounts": ["dbid:a"]}} trailing"#,
            br#"{"list_folder": null}"#,
        ] {
            let text = String::from_utf8_lossy(body);
            assert_eq!(parse_accounts(body), Accounts::Invalid, "{text}");
        }
        // Escaped keys are keys; other members are skipped whatever they hold.
        assert_eq!(
            parse_accounts(br#"{"delta": {"x": [1, {"y": null}]}, "list_\u0066older": {"accounts": ["dbid:\u0061"], "cursor": 5}}"#),
            Accounts::Listed(vec!["dbid:a".into()])
        );
        assert_eq!(
            parse_accounts(br#"{"list_folder": {"accounts": null, "teams": {"dbtid:x": []}}}"#),
            Accounts::Team
        );
    }
}
