//! Dropbox `list_folder` entries → per-object change events, and envelopes of them.
//! Pure: what the store knows of the pair's objects comes in through [`Objects`], and what
//! changes in it goes out as [`MapWrite`]s, committed with the page.
//!
//! Rules, per entry in Dropbox's order:
//! - `file`/`folder` whose id was never seen → `CREATED`; seen at the same path → `UPDATED`;
//!   seen at another path → `UPDATED` with `previousPath` (a move or rename). A `deleted` entry
//!   at that old path in the same walk is folded into the move (its entry goes into the move's
//!   `raw`, no `DELETED`).
//! - other `deleted` → `DELETED`, objectId the id last seen at that path, else `path_lower`;
//!   objectType the type last seen there, else `file`.
//! - every event carries `path` (`path_display`, else `path_lower`).
//! - a `deleted` entry removes what is known under that path too (Dropbox's sync rule: a
//!   deleted folder comes as one entry); its children get no events of their own.
//!
//! Memory is one page's, whatever the walk's size: the mapper keeps only the writes the store
//! has not taken yet (the walker commits each page before it maps the next, and then says so
//! with [`Mapper::committed`]), in ordered maps, so that a deleted folder finds what it held
//! by a range rather than a scan; and the old paths of the walk's most recent moves.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound::{Included, Unbounded};

use serde_json::{Value, json};

use crate::config::ChangeFilter;
use crate::store::record::ObjectV1;
use crate::store::{MapWrite, NewEnvelope};

/// Events per envelope at most (docs/change-events.md).
pub const MAX_EVENTS: usize = 20;
/// Bytes of events plus entries per envelope at most, so records stay far below sled's limits.
pub const MAX_ENVELOPE_BYTES: usize = 32 * 1024;
/// The old paths of at least this many of a walk's latest moves are kept, so that a `deleted`
/// entry at one of them folds into its move even pages later (Dropbox lists a move's two
/// entries close together; a walk may hold hundreds of thousands of moves). One that comes
/// later still is a deletion of a path nothing is known at any more.
const MOVES_KEPT: usize = 10_000;

/// What the store knows of a pair's objects (committed state, which includes the pages of the
/// walk committed so far).
pub trait Objects {
    fn by_id(&self, id: &str) -> Option<ObjectV1>;
    fn by_path(&self, path_lower: &str) -> Option<ObjectV1>;
}

/// One change event and the Dropbox entries behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedEvent {
    pub event: Value,
    pub entries: Vec<Value>,
}

/// Maps the pages of one walk. Keeps the writes of the pages mapped since the last
/// [`Mapper::committed`] (lookups see them before the store does), and the old paths of the
/// latest moves, so that their `deleted` entries fold.
pub struct Mapper {
    element: String,
    date: String,
    /// Uncommitted writes by id (`None`: removed).
    ids: HashMap<String, Option<ObjectV1>>,
    /// Uncommitted writes by `path_lower` (`None`: removed), in path order.
    paths: BTreeMap<String, Option<ObjectV1>>,
    /// (`path_lower`, id) of each object in `ids`: the ids under a folder, by a range.
    id_paths: BTreeSet<(String, String)>,
    /// Folders deleted since the last commit: the store's objects under them are gone, whatever
    /// its maps still say.
    removed_trees: Prefixes,
    moved_from: RecentPaths,
}

impl Mapper {
    /// `date` is the walk's acceptance time (RFC 3339), the `date` of every event.
    pub fn new(element: &str, date: String) -> Mapper {
        Mapper {
            element: element.to_owned(),
            date,
            ids: HashMap::new(),
            paths: BTreeMap::new(),
            id_paths: BTreeSet::new(),
            removed_trees: Prefixes::default(),
            moved_from: RecentPaths::new(MOVES_KEPT),
        }
    }

    /// The store has taken every write [`Mapper::map_page`] returned so far: later lookups go
    /// to it, and the mapper forgets those writes (what it holds stays one page's worth). The
    /// store's maps then decide alone: an id whose map still names a path under a folder deleted
    /// in an earlier page (left only when a feed listed another id at that path without
    /// deleting the first) is known again, as it is to the next walk.
    pub fn committed(&mut self) {
        self.ids.clear();
        self.paths.clear();
        self.id_paths.clear();
        self.removed_trees.clear();
    }

    fn by_id(&self, base: &dyn Objects, id: &str) -> Option<ObjectV1> {
        match self.ids.get(id) {
            Some(known) => known.clone(),
            None => self.unless_removed(base.by_id(id)),
        }
    }

    fn by_path(&self, base: &dyn Objects, path: &str) -> Option<ObjectV1> {
        match self.paths.get(path) {
            Some(known) => known.clone(),
            None => self.unless_removed(base.by_path(path)),
        }
    }

    /// A committed object, unless a folder deleted since the last commit held it.
    fn unless_removed(&self, object: Option<ObjectV1>) -> Option<ObjectV1> {
        object.filter(|o| !self.removed_trees.covers(&o.path_lower))
    }

    /// Records what `id` is now (`None`: unknown), keeping `id_paths` in step.
    fn set_id(&mut self, id: &str, object: Option<ObjectV1>) {
        if let Some(Some(old)) = self.ids.get(id) {
            self.id_paths
                .remove(&(old.path_lower.clone(), id.to_owned()));
        }
        if let Some(object) = &object {
            self.id_paths
                .insert((object.path_lower.clone(), id.to_owned()));
        }
        self.ids.insert(id.to_owned(), object);
    }

    fn write(&mut self, writes: &mut Vec<MapWrite>, write: MapWrite) {
        match &write {
            MapWrite::Put(object) => {
                self.set_id(&object.id, Some(object.clone()));
                self.paths
                    .insert(object.path_lower.clone(), Some(object.clone()));
            }
            MapWrite::RemovePath(path) => {
                self.paths.insert(path.clone(), None);
            }
            MapWrite::RemoveId(id) => self.set_id(id, None),
            MapWrite::RemoveTree(folder) => {
                let prefix = format!("{folder}/");
                // A path key holds the object at that path, so the objects under the folder
                // are the keys that start with its prefix: one range.
                for (_, known) in self
                    .paths
                    .range_mut::<str, _>((Included(prefix.as_str()), Unbounded))
                    .take_while(|(path, _)| path.starts_with(&prefix))
                {
                    *known = None;
                }
                let under: Vec<(String, String)> = self
                    .id_paths
                    .range((prefix.clone(), String::new())..)
                    .take_while(|(path, _)| path.starts_with(&prefix))
                    .cloned()
                    .collect();
                for (path, id) in under {
                    self.id_paths.remove(&(path, id.clone()));
                    self.ids.insert(id, None);
                }
                self.removed_trees.insert(prefix);
            }
        }
        writes.push(write);
    }

    /// Maps one page of entries; returns its events and the object-map writes to commit with it.
    pub fn map_page(
        &mut self,
        base: &dyn Objects,
        entries: &[Value],
    ) -> (Vec<MappedEvent>, Vec<MapWrite>) {
        // Moves in this page, so that a `deleted` entry at the old path that comes before the
        // entry at the new path folds as well.
        let mut last_path: HashMap<&str, String> = HashMap::new();
        for entry in entries {
            if let (Some("file" | "folder"), Some(id), Some(path)) =
                (tag(entry), str_of(entry, "id"), path_lower(entry))
            {
                let old = match last_path.get(id) {
                    Some(old) => Some(old.clone()),
                    None => self.by_id(base, id).map(|o| o.path_lower),
                };
                if let Some(old) = old
                    && old != path
                {
                    self.moved_from.insert(old);
                }
                last_path.insert(id, path);
            }
        }
        let mut events: Vec<MappedEvent> = Vec::new();
        let mut writes = Vec::new();
        let mut move_at: HashMap<String, usize> = HashMap::new();
        let mut folds: HashMap<String, Vec<Value>> = HashMap::new();
        for entry in entries {
            let Some(lower) = path_lower(entry) else {
                continue;
            };
            let display = str_of(entry, "path_display").unwrap_or(&lower).to_owned();
            match tag(entry) {
                Some(kind @ ("file" | "folder")) => {
                    let id = str_of(entry, "id").unwrap_or(&lower).to_owned();
                    let known = self.by_id(base, &id);
                    let mut event = self.event("CREATED", kind, &id, &display);
                    let mut mapped_entries = Vec::new();
                    if let Some(old) = known {
                        event["eventType"] = json!("UPDATED");
                        if old.path_lower != lower {
                            event["previousPath"] = json!(old.path);
                            if self
                                .by_path(base, &old.path_lower)
                                .is_some_and(|o| o.id == id)
                            {
                                self.write(
                                    &mut writes,
                                    MapWrite::RemovePath(old.path_lower.clone()),
                                );
                            }
                            mapped_entries
                                .extend(folds.remove(&old.path_lower).unwrap_or_default());
                            move_at.insert(old.path_lower.clone(), events.len());
                        }
                    }
                    mapped_entries.push(entry.clone());
                    let object = ObjectV1 {
                        id,
                        path_lower: lower,
                        path: display,
                        object_type: kind.to_owned(),
                    };
                    self.write(&mut writes, MapWrite::Put(object));
                    events.push(MappedEvent {
                        event,
                        entries: mapped_entries,
                    });
                }
                Some("deleted") => {
                    if self.moved_from.contains(&lower) {
                        match move_at.get(&lower) {
                            Some(index) => events[*index].entries.push(entry.clone()),
                            None => folds.entry(lower).or_default().push(entry.clone()),
                        }
                        continue;
                    }
                    let known = self.by_path(base, &lower);
                    let (id, kind) = match &known {
                        Some(object) => (object.id.clone(), object.object_type.clone()),
                        None => (lower.clone(), "file".to_owned()),
                    };
                    self.write(&mut writes, MapWrite::RemovePath(lower.clone()));
                    self.write(&mut writes, MapWrite::RemoveTree(lower));
                    if known.is_some() {
                        self.write(&mut writes, MapWrite::RemoveId(id.clone()));
                    }
                    events.push(MappedEvent {
                        event: self.event("DELETED", &kind, &id, &display),
                        entries: vec![entry.clone()],
                    });
                }
                _ => {}
            }
        }
        (events, writes)
    }

    fn event(&self, event_type: &str, object_type: &str, id: &str, path: &str) -> Value {
        json!({
            "elementKey": self.element,
            "eventType": event_type,
            "objectType": object_type,
            "objectId": id,
            "date": self.date,
            "path": path,
        })
    }

    /// The one `UNKNOWN` event of a cursor reset ("changes may have been missed").
    pub fn reset_envelope(&self, account: &str) -> NewEnvelope {
        let event = json!([{
            "elementKey": self.element,
            "eventType": "UNKNOWN",
            "objectType": "account",
            "objectId": account,
            "date": self.date,
            "path": "",
        }]);
        let raw = json!({
            "entries": [],
            "hookrelay": {"reason": "cursor reset by Dropbox; changes may have been missed"},
        });
        NewEnvelope {
            events: event.to_string(),
            raw: raw.to_string(),
        }
    }
}

/// Path prefixes (`folder/`), none a prefix of another, in order: whether one of them is a
/// prefix of a path is one ordered lookup (the greatest prefix at or before the path is the
/// only candidate).
#[derive(Debug, Default)]
struct Prefixes(BTreeSet<String>);

impl Prefixes {
    fn covers(&self, path: &str) -> bool {
        self.0
            .range::<str, _>((Unbounded, Included(path)))
            .next_back()
            .is_some_and(|prefix| path.starts_with(prefix.as_str()))
    }

    fn insert(&mut self, prefix: String) {
        if self.covers(&prefix) {
            return;
        }
        let covered: Vec<String> = self
            .0
            .range::<str, _>((Included(prefix.as_str()), Unbounded))
            .take_while(|p| p.starts_with(&prefix))
            .cloned()
            .collect();
        for p in covered {
            self.0.remove(&p);
        }
        self.0.insert(prefix);
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The latest paths inserted, at least `keep` of them and at most twice that: two generations,
/// the older dropped when the newer is full.
#[derive(Debug)]
struct RecentPaths {
    keep: usize,
    newer: HashSet<String>,
    older: HashSet<String>,
}

impl RecentPaths {
    fn new(keep: usize) -> RecentPaths {
        RecentPaths {
            keep: keep.max(1),
            newer: HashSet::new(),
            older: HashSet::new(),
        }
    }

    fn insert(&mut self, path: String) {
        if self.newer.contains(&path) {
            return;
        }
        if self.newer.len() >= self.keep {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(path);
    }

    fn contains(&self, path: &str) -> bool {
        self.newer.contains(path) || self.older.contains(path)
    }
}

/// The events `filter` keeps, in order (a move when its new or its previous path matches), and
/// how many Dropbox entries went with the others. Applied after mapping, so that the object
/// maps learn of every entry, delivered or not.
pub fn filter(events: Vec<MappedEvent>, filter: &ChangeFilter) -> (Vec<MappedEvent>, u64) {
    if filter.keeps_all() {
        return (events, 0);
    }
    let mut filtered = 0u64;
    let kept = events
        .into_iter()
        .filter(|mapped| {
            let event = &mapped.event;
            let event_type = event["eventType"].as_str().unwrap_or_default();
            let paths: Vec<&str> = ["path", "previousPath"]
                .iter()
                .filter_map(|key| event.get(*key).and_then(Value::as_str))
                .collect();
            let keep = filter.keeps(event_type, &paths);
            if !keep {
                filtered += mapped.entries.len() as u64;
            }
            keep
        })
        .collect();
    (kept, filtered)
}

/// Groups events in order into envelopes of at most `max_events` events and (unless one event
/// alone is larger) `max_bytes` bytes; each envelope's `raw` is `{"entries": [...]}` with
/// exactly the entries of its events.
pub fn envelopes(
    events: Vec<MappedEvent>,
    max_events: usize,
    max_bytes: usize,
) -> Vec<NewEnvelope> {
    let mut out = Vec::new();
    let mut current: Vec<MappedEvent> = Vec::new();
    let mut current_bytes = 0;
    for event in events {
        let size = event.event.to_string().len()
            + event
                .entries
                .iter()
                .map(|e| e.to_string().len() + 1)
                .sum::<usize>();
        if !current.is_empty()
            && (current.len() >= max_events.max(1) || current_bytes + size > max_bytes)
        {
            out.push(envelope(std::mem::take(&mut current)));
            current_bytes = 0;
        }
        current_bytes += size;
        current.push(event);
    }
    if !current.is_empty() {
        out.push(envelope(current));
    }
    out
}

fn envelope(events: Vec<MappedEvent>) -> NewEnvelope {
    let (objects, entries): (Vec<Value>, Vec<Vec<Value>>) =
        events.into_iter().map(|e| (e.event, e.entries)).unzip();
    let entries: Vec<Value> = entries.into_iter().flatten().collect();
    NewEnvelope {
        events: Value::Array(objects).to_string(),
        raw: json!({ "entries": entries }).to_string(),
    }
}

fn tag(entry: &Value) -> Option<&str> {
    str_of(entry, ".tag")
}

fn str_of<'a>(entry: &'a Value, key: &str) -> Option<&'a str> {
    entry.get(key).and_then(Value::as_str)
}

fn path_lower(entry: &Value) -> Option<String> {
    str_of(entry, "path_lower")
        .map(str::to_owned)
        .or_else(|| str_of(entry, "path_display").map(str::to_lowercase))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod filter_tests;
