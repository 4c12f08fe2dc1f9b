//! The mapper's tests: the entries of Dropbox pages → per-object events, against the
//! element's behaviour and against a straightforward oracle (the earlier whole-walk mapper).

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
fn entries_map_to_events_as_the_element_did() {
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

#[test]
fn prefixes_answer_by_one_ordered_lookup() {
    let mut trees = Prefixes::default();
    assert!(!trees.covers("/docs/a"));
    trees.insert("/docs/x/".into());
    trees.insert("/docs-other/".into());
    trees.insert("/b/".into());
    assert!(trees.covers("/docs/x/a.txt"));
    assert!(!trees.covers("/docs/y.txt"));
    assert!(trees.covers("/docs-other/b.txt"));
    assert!(!trees.covers("/docs"));
    // A deleted parent takes the place of the folders under it.
    trees.insert("/docs/".into());
    assert_eq!(
        trees.0.iter().map(String::as_str).collect::<Vec<_>>(),
        ["/b/", "/docs-other/", "/docs/"]
    );
    assert!(trees.covers("/docs/y.txt") && trees.covers("/docs/x/a.txt"));
    // A folder under one already deleted adds nothing.
    trees.insert("/b/c/".into());
    assert_eq!(trees.0.len(), 3);
    assert!(!trees.covers("/a") && !trees.covers("/c") && !trees.covers("/docs.txt"));
    trees.clear();
    assert!(!trees.covers("/docs/y.txt"));
}

#[test]
fn recent_paths_keep_at_least_the_latest_ones() {
    let mut recent = RecentPaths::new(3);
    for i in 0..10_usize {
        recent.insert(format!("/p{i}"));
        for j in i.saturating_sub(2)..=i {
            assert!(recent.contains(&format!("/p{j}")), "{j} after {i}");
        }
        assert!(recent.newer.len() + recent.older.len() <= 6);
    }
    assert!(!recent.contains("/p0"));
    // Inserting a path again makes it recent again.
    recent.insert("/p7".into());
    for i in 10..13 {
        recent.insert(format!("/p{i}"));
    }
    assert!(recent.contains("/p7"));
}

#[test]
fn after_a_commit_lookups_go_to_the_store() {
    let mut mapper = Mapper::new("dropbox", "d".into());
    let (_, writes) = mapper.map_page(&Known(vec![]), &[file("id:1", "/A.txt")]);
    assert_eq!(writes, [MapWrite::Put(object("id:1", "/A.txt", "file"))]);
    mapper.committed();
    // What the store says now is what counts: here it lost the object.
    let (events, _) = mapper.map_page(&Known(vec![]), &[file("id:1", "/A.txt")]);
    assert_eq!(
        summary(&events),
        owned(&[("CREATED", "file", "id:1", "/A.txt", None)])
    );
    // A folder deleted before a commit hides the store's objects under it until then.
    let base = Known(vec![
        object("id:d", "/Docs", "folder"),
        object("id:a", "/Docs/a.txt", "file"),
    ]);
    let (events, _) = mapper.map_page(&base, &[deleted("/Docs"), file("id:a", "/Docs/a.txt")]);
    assert_eq!(summary(&events)[1].0, "CREATED");
    mapper.committed();
    let (events, _) = mapper.map_page(&base, &[file("id:a", "/Docs/a.txt")]);
    assert_eq!(summary(&events)[0].0, "UPDATED");
}

#[test]
fn a_deleted_entry_pages_after_its_move_folds_within_the_kept_moves() {
    let mut store = Applied::default();
    let mut mapper = Mapper::new("dropbox", "d".into());
    let page = |mapper: &mut Mapper, store: &mut Applied, entries: &[Value]| {
        let (events, writes) = mapper.map_page(store, entries);
        store.apply(writes);
        mapper.committed();
        summary(&events)
    };
    page(&mut mapper, &mut store, &[file("id:1", "/a.txt")]);
    page(&mut mapper, &mut store, &[file("id:1", "/b.txt")]);
    assert_eq!(page(&mut mapper, &mut store, &[deleted("/a.txt")]), []);
    // After MOVES_KEPT more moves, the old path is forgotten: a plain deletion of a path
    // nothing is known at.
    page(&mut mapper, &mut store, &[file("id:2", "/c.txt")]);
    page(&mut mapper, &mut store, &[file("id:2", "/d.txt")]);
    let moves: Vec<Value> = (0..2 * MOVES_KEPT)
        .flat_map(|i| [file("id:m", &format!("/m{i}"))])
        .collect();
    page(&mut mapper, &mut store, &moves);
    assert_eq!(
        page(&mut mapper, &mut store, &[deleted("/c.txt")]),
        owned(&[("DELETED", "file", "/c.txt", "/c.txt", None)])
    );
}

/// The object maps as the store keeps them: writes applied as `commit_walk_page` does.
#[derive(Default)]
struct Applied {
    ids: HashMap<String, ObjectV1>,
    paths: BTreeMap<String, ObjectV1>,
}

impl Applied {
    fn apply(&mut self, writes: Vec<MapWrite>) {
        for write in writes {
            match write {
                MapWrite::Put(o) => {
                    self.ids.insert(o.id.clone(), o.clone());
                    self.paths.insert(o.path_lower.clone(), o);
                }
                MapWrite::RemovePath(path) => {
                    self.paths.remove(&path);
                }
                MapWrite::RemoveId(id) => {
                    self.ids.remove(&id);
                }
                MapWrite::RemoveTree(folder) => {
                    let prefix = format!("{folder}/");
                    let children: Vec<ObjectV1> = self
                        .paths
                        .values()
                        .filter(|o| o.path_lower.starts_with(&prefix))
                        .cloned()
                        .collect();
                    for child in children {
                        if self
                            .ids
                            .get(&child.id)
                            .is_some_and(|o| o.path_lower == child.path_lower)
                        {
                            self.ids.remove(&child.id);
                        }
                        self.paths.remove(&child.path_lower);
                    }
                }
            }
        }
    }
}

impl Objects for Applied {
    fn by_id(&self, id: &str) -> Option<ObjectV1> {
        self.ids.get(id).cloned()
    }
    fn by_path(&self, path: &str) -> Option<ObjectV1> {
        self.paths.get(path).cloned()
    }
}

/// A Dropbox account as the feed generator sees it: `path_lower` → (id, tag, path).
#[derive(Default)]
struct Account {
    tree: BTreeMap<String, (String, String, String)>,
    next_id: u32,
    feed: Vec<Value>,
}

const DIRS: [&str; 5] = ["", "/A", "/B", "/A/c", "/B/Dd"];

impl Account {
    fn entry(&self, lower: &str) -> Value {
        let (id, tag, path) = &self.tree[lower];
        match tag.as_str() {
            "folder" => folder(id, path),
            _ => file(id, path),
        }
    }

    fn put(&mut self, tag: &str, path: &str) {
        let lower = path.to_lowercase();
        if let Some((parent, _)) = path.rsplit_once('/')
            && !parent.is_empty()
            && !self.tree.contains_key(&parent.to_lowercase())
        {
            self.put("folder", parent);
        }
        if !self.tree.contains_key(&lower) {
            self.next_id += 1;
            let id = format!("id:{}", self.next_id);
            self.tree
                .insert(lower.clone(), (id, tag.into(), path.into()));
        }
        self.feed.push(self.entry(&lower));
    }

    fn under(&self, lower: &str) -> Vec<String> {
        let prefix = format!("{lower}/");
        self.tree
            .keys()
            .filter(|p| p.starts_with(&prefix))
            .cloned()
            .collect()
    }

    fn pick(&self, tag: Option<&str>, x: usize) -> Option<String> {
        let all: Vec<&String> = self
            .tree
            .iter()
            .filter(|(_, (_, t, _))| tag.is_none_or(|tag| t == tag))
            .map(|(p, _)| p)
            .collect();
        (!all.is_empty()).then(|| all[x % all.len()].clone())
    }

    /// Moves `lower` (and what is under it) to `to`: `deleted` entries for the old paths
    /// (the folder's only, or each one's), before or after the new ones.
    fn move_to(&mut self, lower: &str, to: &str, each: bool, deleted_first: bool) {
        if self.tree.contains_key(&to.to_lowercase()) || to.to_lowercase().starts_with(lower) {
            return;
        }
        let mut old = vec![lower.to_owned()];
        old.extend(self.under(lower));
        let mut dels = Vec::new();
        let mut news = Vec::new();
        for (n, path_lower) in old.iter().enumerate() {
            let (id, tag, path) = self.tree.remove(path_lower).expect("listed");
            if n == 0 || each {
                dels.push(deleted(&path));
            }
            let new = format!("{to}{}", &path[lower.len()..]);
            self.tree.insert(new.to_lowercase(), (id, tag, new.clone()));
            news.push(self.entry(&new.to_lowercase()));
        }
        if deleted_first {
            self.feed.extend(dels);
            self.feed.extend(news);
        } else {
            self.feed.extend(news);
            self.feed.extend(dels);
        }
    }

    fn apply(&mut self, (op, x, y, flag): (u8, usize, usize, bool)) {
        let dir = DIRS[x % DIRS.len()];
        match op % 6 {
            0 => self.put("file", &format!("{dir}/F{}.txt", y % 4)),
            1 => {
                if !dir.is_empty() {
                    self.put("folder", dir)
                }
            }
            2 => {
                if let Some(from) = self.pick(Some("file"), y) {
                    let to = format!("{}/G{}.txt", DIRS[y % DIRS.len()], x % 3);
                    if let Some((parent, _)) = to.rsplit_once('/')
                        && !parent.is_empty()
                    {
                        self.put("folder", parent);
                    }
                    self.move_to(&from, &to, true, flag);
                }
            }
            3 => {
                if let Some(gone) = self.pick(None, y) {
                    let (_, _, path) = self.tree[&gone].clone();
                    for child in self.under(&gone) {
                        self.tree.remove(&child);
                    }
                    self.tree.remove(&gone);
                    self.feed.push(deleted(&path));
                }
            }
            op => {
                if let Some(from) = self.pick(Some("folder"), y) {
                    self.move_to(&from, &format!("/M{}", x % 3), op == 5, flag);
                }
            }
        }
    }
}

proptest::proptest! {
    /// The mapper that forgets each committed page produces exactly the events and writes
    /// of the former one, which kept every object of the walk, on walks of a consistent
    /// account (creations, changes, renames, deletions, folder moves of either shape) in
    /// pages of any size.
    #[test]
    fn forgetting_committed_pages_changes_no_event(
        ops in proptest::collection::vec((0u8..6, 0usize..64, 0usize..64, proptest::bool::ANY), 1..60),
        known in proptest::collection::vec((0u8..2, 0usize..64, 0usize..64, proptest::bool::ANY), 0..12),
        page_sizes in proptest::collection::vec(1usize..9, 1..20),
    ) {
        // Objects known before the walk (an earlier walk's).
        let mut account = Account::default();
        for op in known {
            account.apply(op);
        }
        let mut before = Applied::default();
        let mut earlier = Mapper::new("dropbox", "d".into());
        let (_, writes) = earlier.map_page(&before, &account.feed);
        before.apply(writes);
        account.feed.clear();
        for op in ops {
            account.apply(op);
        }
        let (mut old_store, mut new_store) = (before, Applied::default());
        new_store.ids = old_store.ids.clone();
        new_store.paths = old_store.paths.clone();
        let mut old = walk_wide::WalkWide::new("dropbox", "d".into());
        let mut new = Mapper::new("dropbox", "d".into());
        let mut rest = account.feed.as_slice();
        for size in page_sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (page, next) = rest.split_at((*size).min(rest.len()));
            rest = next;
            let (old_events, old_writes) = old.map_page(&old_store, page);
            let (new_events, new_writes) = new.map_page(&new_store, page);
            proptest::prop_assert_eq!(&new_events, &old_events);
            proptest::prop_assert_eq!(&new_writes, &old_writes);
            old_store.apply(old_writes);
            new_store.apply(new_writes);
            new.committed();
        }
    }
}

/// The mapper as it was before it forgot committed pages (it kept every object and deleted
/// folder of the walk, and scanned them): the oracle of the test above.
mod walk_wide {
    use super::super::*;

    pub(super) struct WalkWide {
        element: String,
        date: String,
        ids: HashMap<String, Option<ObjectV1>>,
        paths: HashMap<String, Option<ObjectV1>>,
        moved_from: HashSet<String>,
        /// Folders deleted in this walk (`path_lower` + `/`): the store's objects under them are
        /// gone, whatever the committed maps still say.
        removed_trees: Vec<String>,
    }

    impl WalkWide {
        /// `date` is the walk's acceptance time (RFC 3339), the `date` of every event.
        pub(super) fn new(element: &str, date: String) -> WalkWide {
            WalkWide {
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
        pub(super) fn map_page(
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
    }
}
