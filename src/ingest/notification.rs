//! The one thing hookrelay reads from a Dropbox notification body: `list_folder.accounts`.
//! `delta` is optional and ignored; the body is stored and forwarded verbatim.

use serde::Deserialize;

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

#[derive(Deserialize)]
struct Body {
    list_folder: Option<ListFolder>,
}

#[derive(Deserialize)]
struct ListFolder {
    accounts: Option<Vec<String>>,
    teams: Option<serde_json::Value>,
}

pub fn parse_accounts(body: &[u8]) -> Accounts {
    if !is_object_with_list_folder_object(body) {
        return Accounts::Invalid;
    }
    // The typed parse also rejects duplicate keys, which a plain JSON value would hide.
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
        (None, Some(_)) => Accounts::Team,
        (None, None) => Accounts::Invalid,
    }
}

/// serde builds a struct from a JSON array as well, so the shape is checked on the plain value:
/// the body and its `list_folder` must be objects.
fn is_object_with_list_folder_object(body: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(fields)) => fields
            .get("list_folder")
            .is_some_and(serde_json::Value::is_object),
        _ => false,
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
}
