//! `retry` (docs/operations.md): events waiting for their next attempt made due now, chosen by
//! id, instance or all. The body and answer of `POST /admin/retry`, and the one code path the
//! admin API and the offline CLI share, so that `retry` means the same with the daemon running
//! or stopped.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::store::{self, RetryTarget, Store};

/// The JSON body of `POST /admin/retry`: exactly one of `ids`, `instance` or `all: true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

impl RetryBody {
    /// The body that asks for `target`.
    pub fn from_target(target: &RetryTarget) -> RetryBody {
        match target {
            RetryTarget::Ids(ids) => RetryBody {
                ids: Some(ids.iter().map(Ulid::to_string).collect()),
                ..RetryBody::default()
            },
            RetryTarget::Instance(name) => RetryBody {
                instance: Some(name.clone()),
                ..RetryBody::default()
            },
            RetryTarget::All => RetryBody {
                all: Some(true),
                ..RetryBody::default()
            },
        }
    }

    /// Checks the body: one selector, valid ids.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn into_target(self) -> Result<RetryTarget, String> {
        let all = self.all == Some(true);
        let given = usize::from(self.ids.is_some())
            + usize::from(self.instance.is_some())
            + usize::from(all);
        if given != 1 {
            return Err(
                "give exactly one of \"ids\" (a list), \"instance\" (a name) or \"all\": true"
                    .into(),
            );
        }
        if let Some(ids) = self.ids {
            if ids.is_empty() {
                return Err("\"ids\" is empty".into());
            }
            let ids = ids
                .iter()
                .map(|id| {
                    id.parse::<Ulid>()
                        .map_err(|_| format!("{id:?} is not an event id"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(RetryTarget::Ids(ids));
        }
        Ok(match self.instance {
            Some(instance) => RetryTarget::Instance(instance),
            None => RetryTarget::All,
        })
    }
}

/// What a retry did: the answer of the admin API, and what the CLI prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryOutcome {
    /// Waiting events made due now.
    pub count: u64,
    /// Requested ids that are not pending events (unknown, delivered or dead-lettered).
    #[serde(default)]
    pub not_found: Vec<String>,
    /// Instances whose lanes should look at the store now.
    #[serde(skip)]
    pub instances: BTreeSet<String>,
}

/// Makes the waiting events `target` names due now, attempt counts unchanged, a page at a
/// time. The caller pokes the lanes of [`RetryOutcome::instances`].
///
/// # Errors
/// A store error.
pub async fn retry(store: &Store, target: &RetryTarget) -> Result<RetryOutcome, store::Error> {
    let retried = store.retry_waiting(target).await?;
    let mut instances = retried.instances;
    if let RetryTarget::Instance(name) = target {
        instances.insert(name.clone());
    }
    Ok(RetryOutcome {
        count: retried.count,
        not_found: retried.not_found.iter().map(Ulid::to_string).collect(),
        instances,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(json: &str) -> Result<RetryTarget, String> {
        serde_json::from_str::<RetryBody>(json)
            .map_err(|e| e.to_string())?
            .into_target()
    }

    #[test]
    fn bodies_need_exactly_one_selector_and_round_trip() {
        let id = Ulid::from_parts(1, 2);
        for wanted in [
            RetryTarget::Ids(vec![id]),
            RetryTarget::Instance("acme".into()),
            RetryTarget::All,
        ] {
            let json = serde_json::to_string(&RetryBody::from_target(&wanted)).unwrap_or_default();
            assert_eq!(target(&json), Ok(wanted), "{json}");
        }
        for bad in [
            r#"{}"#,
            r#"{"all": false}"#,
            r#"{"all": true, "instance": "acme"}"#,
            r#"{"ids": []}"#,
            r#"{"ids": ["nope"]}"#,
            r#"{"all": true, "since": "2h"}"#,
        ] {
            assert!(target(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_answer_always_names_its_not_found() {
        let json = serde_json::to_string(&RetryOutcome::default()).unwrap_or_default();
        assert_eq!(json, r#"{"count":0,"not_found":[]}"#);
    }
}
