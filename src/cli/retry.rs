//! `hookrelay retry`: events waiting for their next attempt made due now, through the admin
//! API, or on the stopped store with the same code ([`crate::ops::retry`]).

use super::access::{Access, Offline};
use super::{EXIT_FAILURE, Failure, RetryArgs};
use crate::config::Config;
use crate::ops::retry::{self, RetryBody, RetryOutcome};
use crate::store::RetryTarget;

impl From<RetryArgs> for RetryTarget {
    fn from(args: RetryArgs) -> RetryTarget {
        if !args.ids.is_empty() {
            RetryTarget::Ids(args.ids)
        } else if let Some(instance) = args.instance {
            RetryTarget::Instance(instance)
        } else {
            RetryTarget::All
        }
    }
}

pub async fn run(config: &Config, args: RetryArgs) -> Result<(), Failure> {
    let target = RetryTarget::from(args);
    let access = Access::open(config).await?;
    let outcome = match &access {
        Access::Daemon(client) => {
            client
                .post_long("/admin/retry", &RetryBody::from_target(&target))
                .await
        }
        Access::Offline(Offline {
            store: Some(store), ..
        }) => retry::retry(store, &target)
            .await
            .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string())),
        Access::Offline(Offline { store: None, .. }) => Ok(nothing_stored(&target)),
    };
    let by_daemon = matches!(access, Access::Daemon(_));
    access.close().await?;
    let outcome: RetryOutcome = outcome?;
    let later = if by_daemon || outcome.count == 0 {
        ""
    } else {
        "; they are delivered when the daemon starts"
    };
    println!("{} waiting event(s) due now{later}", outcome.count);
    if outcome.not_found.is_empty() {
        return Ok(());
    }
    Err(Failure::new(
        EXIT_FAILURE,
        format!(
            "no pending event with id {} (delivered, dead-lettered or unknown)",
            outcome.not_found.join(", ")
        ),
    ))
}

/// What a retry finds in a store that does not exist yet.
fn nothing_stored(target: &RetryTarget) -> RetryOutcome {
    let not_found = match target {
        RetryTarget::Ids(ids) => ids.iter().map(ToString::to_string).collect(),
        RetryTarget::Instance(_) | RetryTarget::All => Vec::new(),
    };
    RetryOutcome {
        not_found,
        ..RetryOutcome::default()
    }
}
