//! `[[instance]]` → [`Instance`]: its own keys, its Cloud Elements configuration (see
//! `configuration.rs`), its delivery overrides, and the rules across instances (unique names
//! and ids, one secret per Dropbox app).

use std::collections::{BTreeSet, HashMap};

use super::check::{Checker, Reported};
use super::configuration::{self, Credentials};
use super::document::InstanceSections;
use super::keys::key_path;
use super::problem::{child, quoted};
use super::raw::{RawInstance, RawText};
use super::{ChangeFilter, ChangeType, Delivery, EventsMode, Instance, PathGlob, Secret, delivery};

/// The element every instance must be: hookrelay speaks Dropbox only.
const ELEMENT: &str = "dropbox";

/// Checks every instance, then the rules across them.
pub(crate) fn all(
    c: &mut Checker,
    raws: &[InstanceSections],
    base: &Delivery,
) -> Result<Vec<Instance>, Reported> {
    let mut seen = Seen::default();
    let checked: Vec<Result<Instance, Reported>> = raws
        .iter()
        .enumerate()
        .map(|(index, raw)| {
            let path = format!("instance[{index}]");
            let (identity, instance) = one(c, raw, &path, base);
            seen.check(c, &path, identity);
            instance
        })
        .collect();
    // Collected in two steps so that every instance is checked, not only those before the first
    // invalid one.
    checked.into_iter().collect()
}

/// What the rules across instances look at, as far as it is valid.
struct Identity {
    name: Option<String>,
    id: Option<u64>,
    app: Option<(String, Secret)>,
}

fn one(
    c: &mut Checker,
    raw: &InstanceSections,
    path: &str,
    base: &Delivery,
) -> (Identity, Result<Instance, Reported>) {
    let main = &raw.main;
    let name = name(c, main, path);
    let id = id(c, main, path);
    let element = element(c, main, path);
    let tags = tags(c, main.tags.as_deref(), &child(path, "tags"));
    let accounts = accounts(c, main.accounts.as_deref(), &child(path, "accounts"));
    let events = events(c, main, path);
    let filter = filter(c, main, path, events);
    let configuration = child(path, "configuration");
    let credentials = configuration::credentials(c, &raw.configuration, &configuration);
    let notification = configuration::notification(c, &raw.configuration, &configuration);
    let vendor = events.and_then(|events| {
        configuration::vendor(c, &raw.configuration, &configuration, events, path)
    });
    let delivery = delivery::check(c, &raw.delivery, &child(path, "delivery"), base);
    let changes_checked = match (events, &credentials) {
        (Ok(EventsMode::Changes), Ok(credentials)) => changes_credentials(c, credentials, path),
        _ => Ok(()),
    };
    let identity = Identity {
        name: name.clone().ok(),
        id: id.ok(),
        app: credentials
            .as_ref()
            .ok()
            .map(|found| (found.app_key.clone(), found.app_secret.clone())),
    };
    let assemble = || -> Result<Instance, Reported> {
        let (credentials, notification) = (credentials?, notification?);
        changes_checked?;
        Ok(Instance {
            name: name?,
            id: id?,
            element: element?,
            tags: tags?,
            accounts: accounts?,
            events: events?,
            filter: filter?,
            app_key: credentials.app_key,
            app_secret: credentials.app_secret,
            oauth_callback_url: credentials.oauth_callback_url,
            refresh_token: credentials.refresh_token,
            enabled: notification.enabled,
            callback_url: notification.callback_url,
            signature_key: notification.signature_key,
            previous_signature_key: notification.previous_signature_key,
            vendor: vendor?,
            delivery: delivery?,
        })
    };
    (identity, assemble())
}

fn name(c: &mut Checker, raw: &RawInstance, path: &str) -> Result<String, Reported> {
    let key = child(path, "name");
    let name = c.text(raw.name.as_ref(), &key);
    let name = c.required(name, &key)?;
    let valid = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
    if !valid {
        let rule = "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'";
        return Err(c.report(&key, rule, Some(quoted(&name))));
    }
    Ok(name)
}

fn id(c: &mut Checker, raw: &RawInstance, path: &str) -> Result<u64, Reported> {
    let key = child(path, "id");
    let id = c.required(Ok(raw.id), &key)?;
    u64::try_from(id).ok().filter(|id| *id >= 1).ok_or_else(|| {
        c.report(
            &key,
            "must be an integer of at least 1",
            Some(id.to_string()),
        )
    })
}

fn element(c: &mut Checker, raw: &RawInstance, path: &str) -> Result<String, Reported> {
    let key = child(path, "element");
    let element = c.text(raw.element.as_ref(), &key);
    let element = c.required(element, &key)?;
    if element != ELEMENT {
        let rule = "unsupported element; expected \"dropbox\"";
        return Err(c.report(&key, rule, Some(quoted(&element))));
    }
    Ok(element)
}

fn events(c: &mut Checker, raw: &RawInstance, path: &str) -> Result<EventsMode, Reported> {
    let key = child(path, "events");
    c.parsed(raw.events.as_ref(), &key, |text| match text {
        "notify" => Ok(EventsMode::Notify),
        "changes" => Ok(EventsMode::Changes),
        _ => Err("must be \"notify\" or \"changes\"".to_owned()),
    })
    .map(|events| events.unwrap_or(EventsMode::Notify))
}

/// `paths` and `event_types`: change events only; each, when set, a non-empty list of valid
/// entries.
fn filter(
    c: &mut Checker,
    raw: &RawInstance,
    path: &str,
    events: Result<EventsMode, Reported>,
) -> Result<ChangeFilter, Reported> {
    let paths = filter_list(
        c,
        raw.paths.as_deref(),
        &child(path, "paths"),
        "glob",
        PathGlob::parse,
    );
    let event_types = filter_list(
        c,
        raw.event_types.as_deref(),
        &child(path, "event_types"),
        "event type",
        ChangeType::parse,
    );
    let mut misplaced = Ok(());
    if events == Ok(EventsMode::Notify) {
        for (key, set) in [
            ("paths", raw.paths.is_some()),
            ("event_types", raw.event_types.is_some()),
        ] {
            if set {
                let rule = "applies only with events = \"changes\"";
                misplaced = Err(c.report(&child(path, key), rule, None));
            }
        }
    }
    misplaced?;
    Ok(ChangeFilter {
        paths: paths?,
        event_types: event_types?,
    })
}

/// A filter list: absent, or at least one entry, each parsed by `parse` (whose error is the
/// rule broken).
fn filter_list<T>(
    c: &mut Checker,
    raw: Option<&[RawText]>,
    path: &str,
    what: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<Vec<T>>, Reported> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.is_empty() {
        let rule = format!("must list at least one {what}; omit the key to keep every event");
        return Err(c.report(path, rule, Some("[]".to_owned())));
    }
    let checked: Vec<Result<T, Reported>> = raw
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let key = format!("{path}[{index}]");
            let parsed = c.parsed(Some(entry), &key, &parse);
            c.required(parsed, &key)
        })
        .collect();
    checked.into_iter().collect::<Result<_, _>>().map(Some)
}

fn tags(c: &mut Checker, raw: Option<&[RawText]>, path: &str) -> Result<Vec<String>, Reported> {
    let checked: Vec<Result<String, Reported>> = raw
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(index, tag)| {
            let key = format!("{path}[{index}]");
            let tag = c.text(Some(tag), &key);
            c.required(tag, &key)
        })
        .collect();
    checked.into_iter().collect()
}

fn accounts(
    c: &mut Checker,
    raw: Option<&[RawText]>,
    path: &str,
) -> Result<Option<Vec<String>>, Reported> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.is_empty() {
        let rule = "must list at least one account; omit accounts to match every account";
        return Err(c.report(path, rule, Some("[]".to_owned())));
    }
    let mut seen = BTreeSet::new();
    let checked: Vec<Result<String, Reported>> = raw
        .iter()
        .enumerate()
        .map(|(index, entry)| account(c, entry, &format!("{path}[{index}]"), &mut seen))
        .collect();
    checked.into_iter().collect::<Result<_, _>>().map(Some)
}

fn account(
    c: &mut Checker,
    raw: &RawText,
    key: &str,
    seen: &mut BTreeSet<String>,
) -> Result<String, Reported> {
    let account = c.text(Some(raw), key);
    let account = c.required(account, key)?;
    let valid = account.strip_prefix("dbid:").is_some_and(|tail| {
        tail.len() == 35
            && tail
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-'))
    });
    if !valid {
        let rule = "must be \"dbid:\" followed by 35 characters of A-Z, a-z, 0-9, '_' or '-'";
        return Err(c.report(key, rule, Some(quoted(&account))));
    }
    if !seen.insert(account.clone()) {
        return Err(c.report(key, "duplicate account", Some(quoted(&account))));
    }
    Ok(account)
}

/// Change events need a way to get Dropbox credentials.
fn changes_credentials(
    c: &mut Checker,
    credentials: &Credentials,
    path: &str,
) -> Result<(), Reported> {
    if credentials.oauth_callback_url.is_some() || credentials.refresh_token.is_some() {
        return Ok(());
    }
    let rule = "events = \"changes\" needs configuration \"oauth.callback.url\" or \"oauth.refresh_token\"";
    Err(c.report(&child(path, "events"), rule, Some(quoted("changes"))))
}

/// Names, ids and apps seen in earlier instances.
#[derive(Default)]
struct Seen {
    names: HashMap<String, String>,
    ids: HashMap<u64, String>,
    apps: HashMap<String, Secret>,
}

impl Seen {
    fn check(&mut self, c: &mut Checker, path: &str, identity: Identity) {
        if let Some(name) = identity.name {
            if let Some(first) = self.names.get(&name) {
                let rule = format!("duplicate name; also used by {first}");
                c.report(&child(path, "name"), rule, Some(quoted(&name)));
            } else {
                self.names.insert(name, path.to_owned());
            }
        }
        if let Some(id) = identity.id {
            if let Some(first) = self.ids.get(&id) {
                let rule = format!("duplicate id; also used by {first}");
                c.report(&child(path, "id"), rule, Some(id.to_string()));
            } else {
                self.ids.insert(id, path.to_owned());
            }
        }
        if let Some((app_key, app_secret)) = identity.app {
            match self.apps.get(&app_key) {
                Some(first) if *first != app_secret => {
                    let key = key_path(&child(path, "configuration"), "oauth.api.secret");
                    let rule = "instances sharing oauth.api.key must share oauth.api.secret";
                    c.report(&key, rule, None);
                }
                Some(_) => {}
                None => {
                    self.apps.insert(app_key, app_secret);
                }
            }
        }
    }
}
