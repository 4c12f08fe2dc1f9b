//! `hookrelay authorize --instance NAME --code CODE` (docs/change-events.md): through the running
//! daemon's admin API, which uses the new credentials at once, or on a stopped daemon's store
//! (created when the daemon never ran). `--code -` reads the code from stdin, keeping it out of the
//! process list and the shell history.

use std::io::BufRead;

use super::access::{Access, Offline};
use super::{EXIT_FAILURE, Failure};
use crate::changes::api::Api;
use crate::changes::authorize::{self, AuthorizeError};
use crate::config::Config;
use crate::ops::admin::{AuthorizeAnswer, AuthorizeRequest};
use crate::store;

pub async fn run(config: &Config, instance: &str, code: &str) -> Result<(), Failure> {
    let code = read_code(code)?;
    // A wrong name fails here, before the code is spent or the store opened.
    authorize::changes_instance(config, instance).map_err(failure)?;
    let access = Access::open(config).await?;
    let answer = match &access {
        Access::Daemon(client) => {
            let request = AuthorizeRequest {
                instance: instance.to_owned(),
                code,
            };
            client.post("/admin/authorize", &request).await
        }
        Access::Offline(offline) => offline_authorize(config, offline, instance, &code).await,
    };
    access.close().await?;
    let answer = answer?;
    let cursor = if answer.cursor_taken {
        "its cursor starts now: changes from this moment on are reported"
    } else {
        "it keeps its cursor: changes since the last walk are still reported"
    };
    println!(
        "{}: authorized for Dropbox account {}; {cursor}",
        answer.instance, answer.account
    );
    Ok(())
}

/// The code itself, or the first line of stdin for `-`.
fn read_code(code: &str) -> Result<String, Failure> {
    let code = if code == "-" {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot read the code: {e}")))?;
        line
    } else {
        code.to_owned()
    };
    let code = code.trim();
    if code.is_empty() {
        return Err(Failure::new(EXIT_FAILURE, "the code is empty"));
    }
    Ok(code.to_owned())
}

/// On the stopped daemon's store; a store that does not exist yet is created.
async fn offline_authorize(
    config: &Config,
    offline: &Offline,
    instance: &str,
    code: &str,
) -> Result<AuthorizeAnswer, Failure> {
    let api = Api::new()
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot build the HTTP client: {e}")))?;
    let created;
    let store = match &offline.store {
        Some(store) => store,
        None => {
            let path = offline.path.clone();
            created = tokio::task::spawn_blocking(move || store::create_offline(&path))
                .await
                .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))?
                .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))?;
            &created
        }
    };
    let result = authorize::authorize(&api, store, config, instance, code).await;
    if offline.store.is_none() {
        store
            .close()
            .await
            .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))?;
    }
    let authorized = result.map_err(failure)?;
    Ok(AuthorizeAnswer {
        instance: instance.to_owned(),
        account: authorized.account,
        cursor_taken: authorized.cursor_taken,
    })
}

fn failure(err: AuthorizeError) -> Failure {
    Failure::new(EXIT_FAILURE, err.to_string())
}
