//! A listing kept small: each snapshot a fixed-size record with its texts interned (a
//! policy's snapshot names are the same on every server), grouped by server as the pages
//! arrive, and each server's part taken out once it is planned. A fleet's listing is read
//! before anything is planned, so it is the largest thing a run holds: 32 bytes a snapshot
//! here, against about 250 as a [`Snapshot`] with its strings.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use indexmap::IndexSet;
use tokio::time::Instant;

use crate::model::{ServerId, ServerRef, Snapshot, SnapshotId, SnapshotStatus};

/// Texts, each kept once, named by their number.
#[derive(Debug, Default)]
pub struct Names(IndexSet<Box<str>>);

impl Names {
    fn intern(&mut self, text: &str) -> u32 {
        let index = match self.0.get_index_of(text) {
            Some(i) => i,
            None => self.0.insert_full(text.into()).0,
        };
        // At most `MAX_RECORDS` records a listing, each with three texts.
        u32::try_from(index).unwrap_or(u32::MAX)
    }

    fn get(&self, index: u32) -> &str {
        self.0.get_index(index as usize).map_or("", |s| s)
    }
}

/// `status` of a [`Record`]: these three, or the number of another status's text.
const IN_PROGRESS: u32 = u32::MAX;
const COMPLETED: u32 = u32::MAX - 1;
const FAILED: u32 = u32::MAX - 2;
/// `size_mb` of a [`Record`] that has none. Sizes from 4 PiB up are kept as just under.
const NO_SIZE: u32 = u32::MAX;

/// One snapshot, all a decision needs of it (its description is left out).
#[derive(Debug, Clone, Copy)]
struct Record {
    id: SnapshotId,
    created_secs: i64,
    created_nanos: u32,
    size_mb: u32,
    name: u32,
    status: u32,
}

/// One server's snapshots.
#[derive(Debug, Clone, Default)]
struct Group {
    server_name: u32,
    records: Vec<Record>,
}

/// Groups with more records than this are de-duplicated through a set of their ids, not by
/// looking through them (a provider that lists one server's records over and over).
const LOOKED_THROUGH: usize = 32;

/// A listing as its pages arrive: [`Listing::builder`], [`ListingBuilder::push`] each record,
/// [`ListingBuilder::finish`].
#[derive(Debug)]
pub struct ListingBuilder {
    started: Instant,
    names: Names,
    groups: HashMap<ServerId, Group>,
    /// The ids of the groups too large to look through.
    large: HashMap<ServerId, HashSet<SnapshotId>>,
}

impl ListingBuilder {
    /// Keeps `s` unless its id is already there: a snapshot created while the pages were
    /// read can show on two of them, and counted twice it would look like one too many.
    pub fn push(&mut self, s: Snapshot) {
        let status = match &s.status {
            SnapshotStatus::InProgress => IN_PROGRESS,
            SnapshotStatus::Completed => COMPLETED,
            SnapshotStatus::Failed => FAILED,
            SnapshotStatus::Other(text) => self.names.intern(text).min(FAILED - 1),
        };
        let group = self.groups.entry(s.server.id).or_default();
        if group.records.len() < LOOKED_THROUGH {
            if group.records.iter().any(|r| r.id == s.id) {
                return;
            }
        } else {
            let ids = self
                .large
                .entry(s.server.id)
                .or_insert_with(|| group.records.iter().map(|r| r.id).collect());
            if !ids.insert(s.id) {
                return;
            }
        }
        if group.records.is_empty() {
            group.server_name = self.names.intern(&s.server.name);
        }
        group.records.push(Record {
            id: s.id,
            created_secs: s.created_at.timestamp(),
            created_nanos: s.created_at.timestamp_subsec_nanos(),
            size_mb: s.size_mb.map_or(NO_SIZE, |m| {
                u32::try_from(m).unwrap_or(u32::MAX).min(NO_SIZE - 1)
            }),
            name: self.names.intern(&s.name),
            status,
        });
    }

    pub fn finish(self) -> Listing {
        let mut groups = self.groups;
        for group in groups.values_mut() {
            group.records.shrink_to_fit();
        }
        groups.shrink_to_fit();
        Listing {
            taken_at: self.started,
            names: Arc::new(self.names),
            groups,
        }
    }
}

/// Snapshots on some servers, as listed from `taken_at` (monotonic; when the listing began,
/// so a change while its pages were read is later than it).
#[derive(Debug, Clone)]
pub struct Listing {
    pub taken_at: Instant,
    names: Arc<Names>,
    groups: HashMap<ServerId, Group>,
}

impl Listing {
    /// A listing beginning now.
    pub fn builder() -> ListingBuilder {
        ListingBuilder {
            started: Instant::now(),
            names: Names::default(),
            groups: HashMap::new(),
            large: HashMap::new(),
        }
    }

    pub fn new(snapshots: Vec<Snapshot>) -> Self {
        let mut builder = Self::builder();
        for s in snapshots {
            builder.push(s);
        }
        builder.finish()
    }

    /// Everything listed on server `id`, in the order listed (none when it had nothing).
    pub fn server(&self, id: ServerId) -> Vec<Snapshot> {
        self.groups
            .get(&id)
            .map(|g| snapshots(&self.names, id, g))
            .unwrap_or_default()
    }

    /// Server `id`'s part, taken out of the listing (empty when it had nothing).
    pub fn take(&mut self, id: ServerId) -> ServerSnapshots {
        ServerSnapshots {
            names: self.names.clone(),
            server: id,
            group: self.groups.remove(&id).unwrap_or_default(),
        }
    }

    /// Server `id`'s part, copied.
    pub fn part(&self, id: ServerId) -> ServerSnapshots {
        ServerSnapshots {
            names: self.names.clone(),
            server: id,
            group: self.groups.get(&id).cloned().unwrap_or_default(),
        }
    }

    /// How many snapshots it holds.
    pub fn len(&self) -> usize {
        self.groups.values().map(|g| g.records.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// One server's part of a listing, small until [`ServerSnapshots::snapshots`] is asked for.
#[derive(Debug, Clone)]
pub struct ServerSnapshots {
    names: Arc<Names>,
    server: ServerId,
    group: Group,
}

impl ServerSnapshots {
    pub fn snapshots(&self) -> Vec<Snapshot> {
        snapshots(&self.names, self.server, &self.group)
    }

    /// The snapshot named `name`, if listed.
    pub fn named(&self, name: &str) -> Option<Snapshot> {
        self.group
            .records
            .iter()
            .find(|r| self.names.get(r.name) == name)
            .map(|r| snapshot(&self.names, self.server, self.group.server_name, r))
    }
}

fn snapshots(names: &Names, server: ServerId, group: &Group) -> Vec<Snapshot> {
    group
        .records
        .iter()
        .map(|r| snapshot(names, server, group.server_name, r))
        .collect()
}

fn snapshot(names: &Names, server: ServerId, server_name: u32, r: &Record) -> Snapshot {
    Snapshot {
        id: r.id,
        server: ServerRef {
            id: server,
            name: names.get(server_name).to_owned(),
        },
        name: names.get(r.name).to_owned(),
        status: match r.status {
            IN_PROGRESS => SnapshotStatus::InProgress,
            COMPLETED => SnapshotStatus::Completed,
            FAILED => SnapshotStatus::Failed,
            other => SnapshotStatus::Other(names.get(other).to_owned()),
        },
        size_mb: (r.size_mb != NO_SIZE).then_some(u64::from(r.size_mb)),
        created_at: DateTime::<Utc>::from_timestamp(r.created_secs, r.created_nanos)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
        description: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: u64, server: ServerId, name: &str, status: SnapshotStatus) -> Snapshot {
        Snapshot {
            id,
            server: ServerRef {
                id: server,
                name: format!("srv-{server}"),
            },
            name: name.into(),
            status,
            size_mb: Some(id * 1000),
            created_at: DateTime::<Utc>::from_timestamp(1_700_000_000 + id as i64, 5).unwrap(),
            description: Some("kept out".into()),
        }
    }

    /// Every field a plan reads comes back as it was listed, in the order listed.
    #[test]
    fn a_snapshot_reads_back_as_listed_but_its_description() {
        let listed = vec![
            snap(3, 1, "daily-20250101T000000Z", SnapshotStatus::Completed),
            snap(1, 1, "hand-made", SnapshotStatus::Other("restoring".into())),
            snap(2, 1, "daily-20250102T000000Z", SnapshotStatus::InProgress),
            snap(4, 2, "daily-20250101T000000Z", SnapshotStatus::Failed),
        ];
        let listing = Listing::new(listed.clone());
        let back = listing.server(1);
        let want: Vec<Snapshot> = listed[..3]
            .iter()
            .cloned()
            .map(|s| Snapshot {
                description: None,
                ..s
            })
            .collect();
        assert_eq!(back, want);
        assert_eq!(listing.server(2)[0].status, SnapshotStatus::Failed);
        assert!(listing.server(9).is_empty());
        assert_eq!(listing.len(), 4);
    }

    /// A record seen on two pages (the list shifted while it was read) is kept once, in a
    /// small group and in one too large to look through alike.
    #[test]
    fn a_snapshot_listed_twice_is_kept_once() {
        let mut b = Listing::builder();
        for round in 0..2 {
            for id in 0..100 {
                b.push(snap(id, 1, &format!("s{id}"), SnapshotStatus::Completed));
            }
            b.push(snap(500 + round, 2, "x", SnapshotStatus::Completed));
            b.push(snap(500, 2, "x", SnapshotStatus::Completed));
        }
        let mut listing = b.finish();
        assert_eq!(listing.server(1).len(), 100);
        assert_eq!(listing.server(2).len(), 2);
        let part = listing.take(1);
        assert_eq!(part.snapshots().len(), 100);
        assert_eq!(part.named("s7").map(|s| s.id), Some(7));
        assert!(listing.server(1).is_empty(), "taken out");
    }

    /// A listing of a policy's snapshots on many servers keeps each name once.
    #[test]
    fn names_repeated_on_every_server_are_kept_once() {
        let mut b = Listing::builder();
        for server in 0..1000 {
            b.push(snap(
                server,
                server,
                "daily-20250101T000000Z",
                SnapshotStatus::Completed,
            ));
        }
        let listing = b.finish();
        // the snapshot name and a thousand server names
        assert_eq!(listing.names.0.len(), 1001);
    }
}
