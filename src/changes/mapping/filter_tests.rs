//! The change filter over mapped events: what is kept, what is counted, what the envelopes of
//! the kept events carry, and that the object maps learn of every entry all the same.

use super::*;
use crate::config::{ChangeType, PathGlob};

struct Known(Vec<ObjectV1>);

impl Objects for Known {
    fn by_id(&self, id: &str) -> Option<ObjectV1> {
        self.0.iter().find(|o| o.id == id).cloned()
    }
    fn by_path(&self, path: &str) -> Option<ObjectV1> {
        self.0.iter().find(|o| o.path_lower == path).cloned()
    }
}

fn object(id: &str, path: &str) -> ObjectV1 {
    ObjectV1 {
        id: id.into(),
        path_lower: path.to_lowercase(),
        path: path.into(),
        object_type: "file".into(),
    }
}

fn file(id: &str, path: &str) -> Value {
    json!({".tag": "file", "id": id, "name": "x", "path_lower": path.to_lowercase(), "path_display": path})
}

fn deleted(path: &str) -> Value {
    json!({".tag": "deleted", "name": "x", "path_lower": path.to_lowercase(), "path_display": path})
}

fn in_folder_created_or_updated() -> ChangeFilter {
    ChangeFilter {
        paths: Some(vec![
            PathGlob::parse("/in/**").unwrap_or_else(|rule| panic!("{rule}")),
        ]),
        event_types: Some(vec![ChangeType::Created, ChangeType::Updated]),
    }
}

#[test]
fn only_matching_events_are_kept_with_exactly_their_entries() {
    let base = Known(vec![
        object("id:c", "/Out/c.txt"),
        object("id:d", "/out/d.txt"),
        object("id:e", "/In/e.txt"),
        object("id:f", "/in/f.txt"),
    ]);
    let mut mapper = Mapper::new("dropbox", "d".into());
    let (events, writes) = mapper.map_page(
        &base,
        &[
            file("id:a", "/In/a.txt"),
            file("id:b", "/out/b.txt"),
            // Into the folder, and out of it: both moves are kept.
            deleted("/Out/c.txt"),
            file("id:c", "/In/c.txt"),
            deleted("/In/e.txt"),
            file("id:e", "/Out/e.txt"),
            deleted("/out/d.txt"),
            // In the folder, but of a type not kept.
            deleted("/in/f.txt"),
        ],
    );
    let (kept, filtered) = filter(events, &in_folder_created_or_updated());
    let rows: Vec<(String, String)> = kept
        .iter()
        .map(|m| {
            (
                m.event["eventType"].as_str().unwrap_or_default().to_owned(),
                m.event["path"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("CREATED", "/In/a.txt"),
        ("UPDATED", "/In/c.txt"),
        ("UPDATED", "/Out/e.txt"),
    ];
    assert_eq!(
        rows,
        expected.map(|(t, p)| (t.to_owned(), p.to_owned())),
        "{kept:#?}"
    );
    // /out/b.txt, the deletions of /out/d.txt and /in/f.txt.
    assert_eq!(filtered, 3);
    // The maps learn of the filtered entries too.
    assert!(writes.contains(&MapWrite::Put(object("id:b", "/out/b.txt"))));
    assert!(writes.contains(&MapWrite::RemoveId("id:d".into())));

    let chunks = envelopes(kept, MAX_EVENTS, MAX_ENVELOPE_BYTES);
    assert_eq!(chunks.len(), 1);
    let raw: Value = serde_json::from_str(&chunks[0].raw).unwrap_or_default();
    let raw_paths: Vec<&str> = raw["entries"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e["path_display"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        raw_paths,
        [
            "/In/a.txt",
            "/Out/c.txt",
            "/In/c.txt",
            "/In/e.txt",
            "/Out/e.txt"
        ]
    );
}

#[test]
fn no_filter_keeps_everything_and_unknown_always_passes() {
    let mut mapper = Mapper::new("dropbox", "d".into());
    let (events, _) = mapper.map_page(&Known(vec![]), &[file("id:x", "/x")]);
    let (kept, filtered) = filter(events.clone(), &ChangeFilter::default());
    assert_eq!((kept, filtered), (events, 0));

    let unknown = MappedEvent {
        event: json!({"eventType": "UNKNOWN", "path": ""}),
        entries: Vec::new(),
    };
    let (kept, filtered) = filter(vec![unknown.clone()], &in_folder_created_or_updated());
    assert_eq!((kept, filtered), (vec![unknown], 0));
}
