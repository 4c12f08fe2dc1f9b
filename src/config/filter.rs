//! Change filters (`paths`, `event_types` of a change-events instance): the path-glob grammar,
//! its matcher, and which change events a [`ChangeFilter`] keeps. Pure.
//!
//! A glob is matched against a Dropbox path such as `/invoices/2026/march.pdf`, segment by
//! segment, case-insensitively: `*` matches any run of characters within one segment (none
//! included), a segment that is exactly `**` matches zero or more whole segments, and every
//! other character matches itself. So `/invoices/**` matches `/invoices` itself and everything
//! under it (a deleted or moved folder is reported once, for the folder), and `/reports/*.pdf`
//! matches `/reports/q1.pdf` but not `/reports/2026/q1.pdf`.

use std::fmt;

/// The event types `event_types` may name.
const EVENT_TYPES: [ChangeType; 4] = [
    ChangeType::Created,
    ChangeType::Updated,
    ChangeType::Deleted,
    ChangeType::Unknown,
];

/// A change event's `eventType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Created,
    Updated,
    Deleted,
    /// "Changes may have been missed": always delivered, whatever the filter.
    Unknown,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Created => "CREATED",
            ChangeType::Updated => "UPDATED",
            ChangeType::Deleted => "DELETED",
            ChangeType::Unknown => "UNKNOWN",
        }
    }

    /// Parses a name as written in `event_types` (upper case).
    ///
    /// # Errors
    /// Any other text; the error is the rule broken.
    pub fn parse(text: &str) -> Result<ChangeType, String> {
        EVENT_TYPES
            .into_iter()
            .find(|t| t.as_str() == text)
            .ok_or_else(|| {
                "must be one of \"CREATED\", \"UPDATED\", \"DELETED\" or \"UNKNOWN\"".to_owned()
            })
    }
}

/// One segment of a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole segments.
    AnyDepth,
    /// Exactly one segment; `*` matches any run of characters. Lower case.
    One(Vec<char>),
}

/// A checked glob on Dropbox paths (see the module's documentation for the grammar).
#[derive(Clone, PartialEq, Eq)]
pub struct PathGlob {
    text: String,
    segments: Vec<Segment>,
}

impl fmt::Debug for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathGlob({:?})", self.text)
    }
}

impl fmt::Display for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PathGlob {
    /// Parses a glob such as `/invoices/**` or `/reports/*.pdf`.
    ///
    /// # Errors
    /// A glob that does not start with `/`, has an empty segment (`//`, a trailing `/`), or a
    /// `**` that is not a whole segment; the error is the rule broken.
    pub fn parse(text: &str) -> Result<PathGlob, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(
                "must start with \"/\" (a path from the account's root, such as \"/invoices/**\")"
                    .to_owned(),
            );
        };
        let mut segments = Vec::new();
        for segment in rest.split('/') {
            if segment.is_empty() {
                return Err(
                    "must not have an empty segment (\"//\", a lone or trailing \"/\")".to_owned(),
                );
            }
            if segment == "**" {
                segments.push(Segment::AnyDepth);
            } else if segment.contains("**") {
                return Err(
                    "\"**\" must be a whole segment, such as \"/invoices/**/*.pdf\"".to_owned(),
                );
            } else {
                segments.push(Segment::One(segment.to_lowercase().chars().collect()));
            }
        }
        Ok(PathGlob {
            text: text.to_owned(),
            segments,
        })
    }

    /// Whether `path` (a Dropbox path from the root, any case) matches.
    pub fn matches(&self, path: &str) -> bool {
        let lower = path.to_lowercase();
        let Some(rest) = lower.strip_prefix('/') else {
            return false;
        };
        let path: Vec<Vec<char>> = rest.split('/').map(|s| s.chars().collect()).collect();
        wildcard(
            &self.segments,
            &path,
            |s| matches!(s, Segment::AnyDepth),
            |s, p| match s {
                Segment::AnyDepth => true,
                Segment::One(pattern) => segment_matches(pattern, p),
            },
        )
    }
}

/// Whether one path segment matches a segment pattern (`*`: any run of characters).
fn segment_matches(pattern: &[char], segment: &[char]) -> bool {
    wildcard(pattern, segment, |c| *c == '*', |p, c| p == c)
}

/// Wildcard matching of `items` against `pattern`: a star element matches any run of items (none
/// included), any other element exactly one item it `fits`. Greedy with one backtracking point,
/// so linear in practice and at worst `pattern.len() × items.len()` steps: when an element fails,
/// only the latest star need take one more item (the earlier stars' choices cannot help).
fn wildcard<P, I>(
    pattern: &[P],
    items: &[I],
    is_star: impl Fn(&P) -> bool,
    fits: impl Fn(&P, &I) -> bool,
) -> bool {
    let (mut p, mut i) = (0, 0);
    // (index of the latest star in the pattern, items it has taken up to).
    let mut star: Option<(usize, usize)> = None;
    while i < items.len() {
        match pattern.get(p) {
            Some(element) if is_star(element) => {
                star = Some((p, i));
                p += 1;
            }
            Some(element) if fits(element, &items[i]) => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((at, taken)) => {
                    star = Some((at, taken + 1));
                    p = at + 1;
                    i = taken + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(is_star)
}

/// What a change-events instance keeps of its events: those at a path of `paths` and of a type
/// of `event_types` (each `None`: no restriction). `UNKNOWN` events always pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeFilter {
    pub paths: Option<Vec<PathGlob>>,
    pub event_types: Option<Vec<ChangeType>>,
}

impl ChangeFilter {
    /// Whether it keeps every event.
    pub fn keeps_all(&self) -> bool {
        self.paths.is_none() && self.event_types.is_none()
    }

    /// Whether an event of type `event_type` (its `eventType`) about `paths` (its path and, for a
    /// move, its previous path) is kept: when one of them matches.
    pub fn keeps(&self, event_type: &str, paths: &[&str]) -> bool {
        if event_type == ChangeType::Unknown.as_str() {
            return true;
        }
        let type_kept = self
            .event_types
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| t.as_str() == event_type));
        let path_kept = self.paths.as_ref().is_none_or(|globs| {
            paths
                .iter()
                .any(|path| globs.iter().any(|glob| glob.matches(path)))
        });
        type_kept && path_kept
    }
}

#[cfg(test)]
mod tests;
