//! Dropbox `list_folder` entries → per-object change events (SPEC §8), and envelopes of them.
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

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::store::record::ObjectV1;
use crate::store::{MapWrite, NewEnvelope};

/// Events per envelope at most (SPEC §5, §8).
pub const MAX_EVENTS: usize = 20;
/// Bytes of events plus entries per envelope at most, so records stay far below sled's limits.
pub const MAX_ENVELOPE_BYTES: usize = 32 * 1024;

/// What the store knows of a pair's objects (committed state).
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

/// Maps the pages of one walk. Keeps what earlier pages of the walk changed, so that lookups
/// need not wait for a commit, and the old paths of moves, so that their `deleted` entries fold.
pub struct Mapper {
    element: String,
    date: String,
    ids: HashMap<String, Option<ObjectV1>>,
    paths: HashMap<String, Option<ObjectV1>>,
    moved_from: HashSet<String>,
    /// Folders deleted in this walk (`path_lower` + `/`): the store's objects under them are
    /// gone, whatever the committed maps still say.
    removed_trees: Vec<String>,
}

impl Mapper {
    /// `date` is the walk's acceptance time (RFC 3339), the `date` of every event.
    pub fn new(element: &str, date: String) -> Mapper {
        Mapper {
            element: element.to_owned(),
            date,
            ids: HashMap::new(),
            paths: HashMap::new(),
            moved_from: HashSet::new(),
            removed_trees: Vec::new(),
        }
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

    /// A committed object, unless a folder deleted earlier in this walk held it.
    fn unless_removed(&self, object: Option<ObjectV1>) -> Option<ObjectV1> {
        object.filter(|o| !self.under_removed_tree(&o.path_lower))
    }

    fn under_removed_tree(&self, path_lower: &str) -> bool {
        self.removed_trees
            .iter()
            .any(|prefix| path_lower.starts_with(prefix.as_str()))
    }

    fn write(&mut self, writes: &mut Vec<MapWrite>, write: MapWrite) {
        match &write {
            MapWrite::Put(object) => {
                self.ids.insert(object.id.clone(), Some(object.clone()));
                self.paths
                    .insert(object.path_lower.clone(), Some(object.clone()));
            }
            MapWrite::RemovePath(path) => {
                self.paths.insert(path.clone(), None);
            }
            MapWrite::RemoveId(id) => {
                self.ids.insert(id.clone(), None);
            }
            MapWrite::RemoveTree(folder) => {
                let prefix = format!("{folder}/");
                let under = |o: &Option<ObjectV1>| {
                    o.as_ref()
                        .is_some_and(|o| o.path_lower.starts_with(prefix.as_str()))
                };
                for known in self.ids.values_mut().chain(self.paths.values_mut()) {
                    if under(known) {
                        *known = None;
                    }
                }
                self.removed_trees.push(prefix);
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
mod tests {
    use super::*;

    /// Committed state for the tests: a fixed list of objects.
    struct Known(Vec<ObjectV1>);

    impl Objects for Known {
        fn by_id(&self, id: &str) -> Option<ObjectV1> {
            self.0.iter().find(|o| o.id == id).cloned()
        }
        fn by_path(&self, path: &str) -> Option<ObjectV1> {
            self.0.iter().find(|o| o.path_lower == path).cloned()
        }
    }

    fn object(id: &str, path: &str, kind: &str) -> ObjectV1 {
        ObjectV1 {
            id: id.into(),
            path_lower: path.to_lowercase(),
            path: path.into(),
            object_type: kind.into(),
        }
    }

    fn file(id: &str, path: &str) -> Value {
        json!({".tag": "file", "id": id, "name": "x", "path_lower": path.to_lowercase(), "path_display": path, "rev": "a1c10ce0dd78", "size": 1})
    }

    fn folder(id: &str, path: &str) -> Value {
        json!({".tag": "folder", "id": id, "name": "x", "path_lower": path.to_lowercase(), "path_display": path})
    }

    fn deleted(path: &str) -> Value {
        json!({".tag": "deleted", "name": "x", "path_lower": path.to_lowercase(), "path_display": path})
    }

    /// (eventType, objectType, objectId, path, previousPath) of each event.
    type Row = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
    );

    fn summary(events: &[MappedEvent]) -> Vec<(String, String, String, String, Option<String>)> {
        events
            .iter()
            .map(|m| {
                let e = &m.event;
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (
                    s("eventType"),
                    s("objectType"),
                    s("objectId"),
                    s("path"),
                    e.get("previousPath")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                )
            })
            .collect()
    }

    fn owned(rows: &[Row]) -> Vec<(String, String, String, String, Option<String>)> {
        rows.iter()
            .map(|(t, o, i, p, pp)| {
                (
                    t.to_string(),
                    o.to_string(),
                    i.to_string(),
                    p.to_string(),
                    pp.map(str::to_owned),
                )
            })
            .collect()
    }

    #[test]
    fn entries_map_to_events_per_the_spec() {
        type Case = (&'static str, Vec<ObjectV1>, Vec<Value>, Vec<Row>);
        let cases: Vec<Case> = vec![
            (
                "a new id is CREATED",
                vec![],
                vec![file("id:1", "/A.txt")],
                vec![("CREATED", "file", "id:1", "/A.txt", None)],
            ),
            (
                "a folder, then a file in it",
                vec![],
                vec![folder("id:d", "/Docs"), file("id:2", "/Docs/b.txt")],
                vec![
                    ("CREATED", "folder", "id:d", "/Docs", None),
                    ("CREATED", "file", "id:2", "/Docs/b.txt", None),
                ],
            ),
            (
                "a seen id at the same path is UPDATED",
                vec![object("id:1", "/A.txt", "file")],
                vec![file("id:1", "/A.txt")],
                vec![("UPDATED", "file", "id:1", "/A.txt", None)],
            ),
            (
                "a move: deleted old path first, folded",
                vec![object("id:1", "/A.txt", "file")],
                vec![deleted("/A.txt"), file("id:1", "/B.txt")],
                vec![("UPDATED", "file", "id:1", "/B.txt", Some("/A.txt"))],
            ),
            (
                "a move: new path first, deleted old path folded",
                vec![object("id:1", "/A.txt", "file")],
                vec![file("id:1", "/B.txt"), deleted("/a.txt")],
                vec![("UPDATED", "file", "id:1", "/B.txt", Some("/A.txt"))],
            ),
            (
                "a deletion of a known path names its id and type",
                vec![object("id:d", "/Docs", "folder")],
                vec![deleted("/Docs")],
                vec![("DELETED", "folder", "id:d", "/Docs", None)],
            ),
            (
                "a deletion of an unknown path: path_lower, file",
                vec![],
                vec![deleted("/Old.txt")],
                vec![("DELETED", "file", "/old.txt", "/Old.txt", None)],
            ),
            (
                "created, modified, renamed, deleted in one walk",
                vec![],
                vec![
                    file("id:1", "/a.txt"),
                    file("id:1", "/a.txt"),
                    deleted("/a.txt"),
                    file("id:1", "/b.txt"),
                ],
                vec![
                    ("CREATED", "file", "id:1", "/a.txt", None),
                    ("UPDATED", "file", "id:1", "/a.txt", None),
                    ("UPDATED", "file", "id:1", "/b.txt", Some("/a.txt")),
                ],
            ),
            (
                "unknown tags are skipped",
                vec![],
                vec![json!({".tag": "other", "path_lower": "/x"})],
                vec![],
            ),
        ];
        for (name, known, entries, expected) in cases {
            let mut mapper = Mapper::new("dropbox", "2026-01-01T00:00:00Z".into());
            let (events, _) = mapper.map_page(&Known(known), &entries);
            assert_eq!(summary(&events), owned(&expected), "{name}");
            let raw_count: usize = events.iter().map(|e| e.entries.len()).sum();
            let folded_or_mapped = entries.iter().filter(|e| e[".tag"] != "other").count();
            assert_eq!(
                raw_count, folded_or_mapped,
                "{name}: every entry lands in a raw"
            );
        }
    }

    #[test]
    fn a_move_updates_both_maps_and_a_later_page_sees_them() {
        let base = Known(vec![object("id:1", "/A.txt", "file")]);
        let mut mapper = Mapper::new("dropbox", "d".into());
        let (_, writes) = mapper.map_page(&base, &[file("id:1", "/B.txt")]);
        assert!(writes.contains(&MapWrite::RemovePath("/a.txt".into())));
        assert!(writes.contains(&MapWrite::Put(object("id:1", "/B.txt", "file"))));
        let (events, writes) = mapper.map_page(&base, &[deleted("/b.txt")]);
        assert_eq!(
            summary(&events),
            owned(&[("DELETED", "file", "id:1", "/b.txt", None)])
        );
        assert!(writes.contains(&MapWrite::RemoveId("id:1".into())));
    }

    #[test]
    fn a_deleted_folder_forgets_its_children() {
        let base = Known(vec![
            object("id:d", "/Docs", "folder"),
            object("id:a", "/Docs/a.txt", "file"),
            object("id:o", "/Docs-other/b.txt", "file"),
        ]);
        let mut mapper = Mapper::new("dropbox", "d".into());
        let (events, writes) = mapper.map_page(
            &base,
            &[
                file("id:n", "/Docs/new.txt"),
                deleted("/Docs"),
                file("id:a", "/Docs/a.txt"),
            ],
        );
        assert_eq!(
            summary(&events),
            owned(&[
                ("CREATED", "file", "id:n", "/Docs/new.txt", None),
                ("DELETED", "folder", "id:d", "/Docs", None),
                ("CREATED", "file", "id:a", "/Docs/a.txt", None),
            ])
        );
        assert!(writes.contains(&MapWrite::RemoveTree("/docs".into())));
        // Later pages of the walk: the children are gone, a sibling with a similar name is not.
        let (events, _) = mapper.map_page(
            &base,
            &[deleted("/Docs/new.txt"), file("id:o", "/Docs-other/b.txt")],
        );
        assert_eq!(
            summary(&events),
            owned(&[
                ("DELETED", "file", "/docs/new.txt", "/Docs/new.txt", None),
                ("UPDATED", "file", "id:o", "/Docs-other/b.txt", None),
            ])
        );
    }

    #[test]
    fn envelopes_hold_at_most_20_events_and_exactly_their_entries() {
        let mut mapper = Mapper::new("dropbox", "d".into());
        let entries: Vec<Value> = (0..45)
            .map(|i| file(&format!("id:{i}"), &format!("/f{i}")))
            .collect();
        let (events, _) = mapper.map_page(&Known(vec![]), &entries);
        let chunks = envelopes(events, MAX_EVENTS, MAX_ENVELOPE_BYTES);
        let sizes: Vec<usize> = chunks
            .iter()
            .map(|e| {
                let events: Vec<Value> = serde_json::from_str(&e.events).unwrap_or_default();
                let raw: Value = serde_json::from_str(&e.raw).unwrap_or_default();
                assert_eq!(raw["entries"].as_array().map(Vec::len), Some(events.len()));
                assert_eq!(raw["entries"][0]["id"], events[0]["objectId"]);
                events.len()
            })
            .collect();
        assert_eq!(sizes, [20, 20, 5]);
        // A byte cap splits earlier.
        let (events, _) = Mapper::new("dropbox", "d".into()).map_page(&Known(vec![]), &entries);
        assert!(envelopes(events, MAX_EVENTS, 2000).len() > 3);
    }
}
