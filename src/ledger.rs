//! The create ledger: every create this program sent, appended to a file in `state_dir` (and
//! fsynced) *before* the request goes out, then what its answer said. A create whose answer
//! was lost may have made a snapshot the provider lists only later, or one that a listing read
//! while it changed does not show; a later run in the same slot finds the name here, reads the
//! server's own listing, and does not send that name again unless the provider said it made
//! nothing (or the snapshot it made is gone).
//!
//! One JSON line per event; the newest line of a name is its state. The file is written again
//! with only the live records once it has grown well past them.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::ServerId;

const FILE_NAME: &str = "creates.jsonl";

/// Names remembered per server: the newest slots of the policies on it (a slot's name is
/// asked about only while the slot is the newest of its policy, and a server is under the cap
/// of 5, so few policies snapshot one server).
const KEPT_PER_SERVER: usize = 4;

/// What the provider said to a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Sent, and no answer yet, or the answer was lost (5xx, timeout, reset): the snapshot
    /// may exist, now or later.
    Unknown,
    /// The provider made it.
    Created,
    /// The provider said it did nothing (4xx, 429), or no connection was made.
    Refused,
}

/// "Create `name` on `server` was sent at `at`; its answer: `answer`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub server: ServerId,
    pub name: String,
    pub at: DateTime<Utc>,
    pub answer: Answer,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The ledger is there but cannot be read. Read as empty, it would let a run send a
    /// create whose answer was lost a second time, so nothing acts without it.
    #[error(
        "create ledger {}: {message}; it lists the creates a previous run sent, so nothing is \
         done without it. Fix its owner, mode or contents (one JSON record a line); move it away \
         only if no create of the current slots is still unanswered",
        path.display()
    )]
    Read { path: PathBuf, message: String },
    #[error("create ledger {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Each server's newest records, oldest first.
    records: HashMap<ServerId, Vec<Record>>,
    /// Lines in the file, live or not: when they are far more than the records, it is
    /// written again.
    lines: usize,
    /// Opened for appending at the first record.
    file: Option<File>,
}

impl State {
    fn from_records(all: Vec<Record>) -> Self {
        let mut state = Self {
            lines: all.len(),
            ..Self::default()
        };
        for record in all {
            state.keep(record);
        }
        state
    }

    /// Remembers `record` as the newest of its name; a refused create is forgotten (it made
    /// nothing, and a later run may send it as if it never had been).
    fn keep(&mut self, record: Record) {
        let server = record.server;
        let kept = self.records.entry(server).or_default();
        kept.retain(|r| r.name != record.name);
        if record.answer != Answer::Refused {
            kept.push(record);
        }
        if kept.len() > KEPT_PER_SERVER {
            kept.remove(0);
        }
        if kept.is_empty() {
            self.records.remove(&server);
        }
    }

    fn live(&self) -> usize {
        self.records.values().map(Vec::len).sum()
    }
}

impl Ledger {
    /// Reads the ledger of `state_dir` (which must exist); none there is an empty one.
    pub fn open(state_dir: &Path) -> Result<Self, LedgerError> {
        let path = state_dir.join(FILE_NAME);
        let state = State::from_records(read_records(&path)?);
        Ok(Self {
            path,
            state: Mutex::new(state),
        })
    }

    /// For a dry run: what is on disk if it can be read, else nothing; never written.
    pub fn detached(state_dir: &Path) -> Self {
        let path = state_dir.join(FILE_NAME);
        let state = State::from_records(read_records(&path).unwrap_or_default());
        Self {
            path,
            state: Mutex::new(state),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again (once the state lock is held: another process may have written
    /// it since [`Ledger::open`]).
    pub fn reload(&self) -> Result<(), LedgerError> {
        let state = State::from_records(read_records(&self.path)?);
        *self.lock() = state;
        Ok(())
    }

    /// The newest record of a create of `name` on `server`, if one was sent.
    pub fn sent(&self, server: ServerId, name: &str) -> Option<Record> {
        self.lock()
            .records
            .get(&server)
            .and_then(|kept| kept.iter().find(|r| r.name == name))
            .cloned()
    }

    /// Appends a record. One of [`Answer::Unknown`] is on disk (fsynced) when this returns
    /// `Ok`: only then may the create be sent. An answer that is lost in a crash leaves the
    /// create unknown, which only makes the next run look harder.
    pub fn record(&self, record: Record) -> Result<(), LedgerError> {
        let err = |source| LedgerError::Write {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| err(std::io::Error::other(e)))?;
        line.push(b'\n');
        let durable = record.answer == Answer::Unknown;
        let mut state = self.lock();
        if state.file.is_none() {
            state.file = Some(self.open_for_append().map_err(err)?);
        }
        let file = state.file.as_mut().expect("opened above");
        file.write_all(&line).map_err(err)?;
        if durable {
            file.sync_data().map_err(err)?;
        }
        state.lines += 1;
        state.keep(record);
        if state.lines > 4 * state.live() + 1024 {
            self.compact(&mut state).map_err(err)?;
        }
        Ok(())
    }

    fn open_for_append(&self) -> std::io::Result<File> {
        let existed = self.path.exists();
        let file = File::options().append(true).create(true).open(&self.path)?;
        if !existed {
            // The file's name must survive a crash as its first line does.
            crate::state_file::sync_dir_of(&self.path)?;
        }
        Ok(file)
    }

    /// Writes the live records alone (temp file, fsync, rename).
    fn compact(&self, state: &mut State) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        let mut all: Vec<&Record> = state.records.values().flatten().collect();
        all.sort_by_key(|r| r.at);
        for record in &all {
            serde_json::to_writer(&mut bytes, record).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
        }
        crate::state_file::write_atomic(&self.path, &bytes)?;
        state.lines = all.len();
        state.file = Some(self.open_for_append()?);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The records in the file; none when nothing is at its path. A last line cut short (a crash
/// while it was appended, before its create was sent) is left out; any other line that does
/// not read as a record is an error naming it.
fn read_records(path: &Path) -> Result<Vec<Record>, LedgerError> {
    let err = |message: String| LedgerError::Read {
        path: path.to_owned(),
        message,
    };
    let Some(bytes) = crate::state_file::read(path).map_err(|e| err(e.to_string()))? else {
        return Ok(Vec::new());
    };
    let complete = bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let last = lines.len() - 1;
    let mut records = Vec::new();
    for (i, line) in lines.into_iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(record) => records.push(record),
            Err(_) if i == last && !complete => {
                tracing::warn!(
                    "create ledger {}: its last line was cut short (a crash while it was written); left out",
                    path.display()
                );
            }
            Err(e) => return Err(err(format!("line {}: {e}", i + 1))),
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;

    fn record(server: ServerId, name: &str, answer: Answer) -> Record {
        Record {
            server,
            name: name.into(),
            at: "2025-01-15T02:30:00Z".parse().unwrap(),
            answer,
        }
    }

    #[test]
    fn a_sent_create_is_remembered_across_a_restart_with_its_newest_answer() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.record(record(1, "a", Answer::Unknown)).unwrap();
        ledger.record(record(2, "a", Answer::Unknown)).unwrap();
        ledger.record(record(2, "a", Answer::Created)).unwrap();
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.sent(1, "a").unwrap().answer, Answer::Unknown);
        assert_eq!(ledger.sent(2, "a").unwrap().answer, Answer::Created);
        assert_eq!(ledger.sent(1, "b"), None);
        assert_eq!(ledger.sent(3, "a"), None);
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_left_out_and_any_other_bad_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_string(&record(1, "a", Answer::Unknown)).unwrap();
        fs::write(
            dir.path().join(FILE_NAME),
            format!("{good}\n{{\"server\":2,\"na"),
        )
        .unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(ledger.sent(1, "a").is_some());

        fs::write(dir.path().join(FILE_NAME), format!("garbage\n{good}\n")).unwrap();
        let e = Ledger::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(FILE_NAME) && e.contains("line 1") && e.contains("nothing is done"),
            "{e}"
        );
    }

    #[test]
    fn a_directory_where_the_ledger_should_be_is_an_error_not_an_empty_ledger() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(FILE_NAME)).unwrap();
        let e = Ledger::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("a directory, not a file"), "{e}");
    }

    #[test]
    fn the_file_is_written_again_with_the_live_records_once_it_grew_well_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        for i in 0..3_000u64 {
            let name = format!("slot-{i}");
            ledger
                .record(record(i % 10, &name, Answer::Unknown))
                .unwrap();
            ledger
                .record(record(i % 10, &name, Answer::Created))
                .unwrap();
        }
        let lines = fs::read_to_string(ledger.path()).unwrap().lines().count();
        assert!(lines <= 4 * 40 + 1024, "{lines} lines for 40 live records");
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.sent(9, "slot-2999").unwrap().answer, Answer::Created);
        assert_eq!(ledger.sent(9, "slot-9"), None, "older than the kept ones");
        ledger
            .record(record(9, "slot-2999", Answer::Refused))
            .unwrap();
        assert_eq!(
            ledger.sent(9, "slot-2999"),
            None,
            "a refused create is forgotten"
        );
    }
}
