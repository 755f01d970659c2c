//! The create ledger: every create this program sent, appended to a file in `state_dir` (and
//! fsynced) *before* the request goes out, then what its answer said. A create whose answer
//! was lost may have made a snapshot the provider lists only later, or one that a listing read
//! while it changed does not show; a later run in the same slot finds the name here, reads the
//! server's own listing, and does not send that name again unless the provider said it made
//! nothing (or the snapshot it made is gone).
//!
//! One JSON line per event; the newest line of a name is its state. Only the newest create of
//! each policy on each server is kept (a slot's name is asked about only while it is its
//! policy's newest slot), so the ledger's size follows the config, not time; the file is
//! written again with only those once it has grown well past them.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::ServerId;
use crate::shared::SharedState;
use crate::state_file;

const FILE_NAME: &str = "creates.jsonl";

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

/// "Create `name` (of `policy`) on `server` was sent at `at`; its answer: `answer`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub server: ServerId,
    pub policy: String,
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
    /// With `[ha]`: the cluster's ledger (in etcd) refused or did not take the record.
    #[error("create ledger (the cluster's, in etcd): {0}")]
    Shared(#[from] crate::shared::SharedError),
}

#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    state: Mutex<State>,
    /// With `[ha]`: records live there (written fenced), not in `state_dir`.
    shared: Option<Arc<dyn SharedState>>,
    /// Writers one at a time (a shared write is awaited without holding `state`).
    writes: tokio::sync::Mutex<()>,
}

/// With `[ha]`: a record's key, under the cluster's prefix (the newest of each policy on each
/// server, as in the file).
const SHARED_SECTION: &str = "creates/";

fn shared_key(record: &Record) -> String {
    format!("{SHARED_SECTION}{}/{}", record.server, record.policy)
}

#[derive(Debug, Default)]
struct State {
    /// The newest create of each policy on each server.
    records: HashMap<(ServerId, String), Record>,
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

    /// Remembers `record` as its policy's newest on its server; a refused create is
    /// forgotten (it made nothing, and a later run may send it as if it never had been).
    fn keep(&mut self, record: Record) {
        let key = (record.server, record.policy.clone());
        if record.answer == Answer::Refused {
            if self
                .records
                .get(&key)
                .is_some_and(|r| r.name == record.name)
            {
                self.records.remove(&key);
            }
            return;
        }
        self.records.insert(key, record);
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
            shared: None,
            writes: tokio::sync::Mutex::new(()),
        })
    }

    /// The ledger of a cluster (`[ha]`), read by [`Ledger::load_shared`].
    pub fn shared(state_dir: &Path, shared: Arc<dyn SharedState>) -> Self {
        Self {
            path: state_dir.join(FILE_NAME),
            state: Mutex::default(),
            shared: Some(shared),
            writes: tokio::sync::Mutex::new(()),
        }
    }

    /// With `[ha]`: the records the cluster holds (when this host takes the lead).
    pub async fn load_shared(&self) -> Result<(), LedgerError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let err = |message: String| LedgerError::Read {
            path: self.path.clone(),
            message,
        };
        let mut records = Vec::new();
        for (key, value) in shared
            .read(SHARED_SECTION)
            .await
            .map_err(|e| err(e.to_string()))?
        {
            records.push(
                serde_json::from_str::<Record>(&value)
                    .map_err(|e| err(format!("{key} is not a record: {e}")))?,
            );
        }
        *self.lock() = State::from_records(records);
        Ok(())
    }

    /// For a dry run or `plan`: what is on disk, never written. A ledger that is there but
    /// cannot be read is an error, as for the run (which would refuse): a plan without it
    /// could say "create" where the run fails.
    pub fn detached(state_dir: &Path) -> Result<Self, LedgerError> {
        let path = state_dir.join(FILE_NAME);
        let records = match std::fs::symlink_metadata(&path) {
            // No state directory at all: no ledger can be there.
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Vec::new(),
            _ => read_records(&path)?,
        };
        Ok(Self {
            path,
            state: Mutex::new(State::from_records(records)),
            shared: None,
            writes: tokio::sync::Mutex::new(()),
        })
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

    /// The record of a create of `name` by `policy` on `server`, if that was its newest.
    pub fn sent(&self, server: ServerId, policy: &str, name: &str) -> Option<Record> {
        self.lock()
            .records
            .get(&(server, policy.to_owned()))
            .filter(|r| r.name == name)
            .cloned()
    }

    /// Appends a record. One of [`Answer::Unknown`] is on disk (fsynced) when this returns
    /// `Ok`: only then may the create be sent. An answer that is lost in a crash leaves the
    /// create unknown, which only makes the next run look harder. With `[ha]` it is one fenced
    /// write: a host that no longer leads records nothing, and so creates nothing.
    pub async fn record(&self, record: Record) -> Result<(), LedgerError> {
        let err = |source| LedgerError::Write {
            path: self.path.clone(),
            source,
        };
        let _turn = self.writes.lock().await;
        if let Some(shared) = &self.shared {
            let key = shared_key(&record);
            let written = if record.answer == Answer::Refused {
                shared.write(Vec::new(), vec![key]).await
            } else {
                let value =
                    serde_json::to_string(&record).map_err(|e| err(std::io::Error::other(e)))?;
                shared.write(vec![(key, value)], Vec::new()).await
            };
            written?;
            self.lock().keep(record);
            return Ok(());
        }
        let mut line = serde_json::to_vec(&record).map_err(|e| err(std::io::Error::other(e)))?;
        line.push(b'\n');
        let durable = record.answer == Answer::Unknown;
        let mut state = self.lock();
        if state.file.is_none() {
            let file = self.open_for_append(&mut state).map_err(err)?;
            state.file = Some(file);
        }
        let file = state.file.as_mut().expect("opened above");
        file.write_all(&line).map_err(err)?;
        if durable {
            file.sync_data().map_err(err)?;
        }
        state.lines += 1;
        state.keep(record);
        if state.lines > 4 * state.records.len() + 1024 {
            self.compact(&mut state).map_err(err)?;
        }
        Ok(())
    }

    /// The file, ready to append to. A last line cut short (a crash, a full disk while it was
    /// written, before its create was sent) is cut off first, so the next line starts on a
    /// line of its own. A file this user may not write (left by root's `once`) is written
    /// anew, as this user, with the records read from it. Never through a link: root's
    /// `once` must not append to (or cut short) whatever file the owner of `state_dir`
    /// points it at.
    fn open_for_append(&self, state: &mut State) -> std::io::Result<File> {
        let existed = self.path.exists();
        let file = match append_to(&self.path, true) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && existed => {
                self.rewrite(state)?;
                return append_to(&self.path, false);
            }
            opened => opened?,
        };
        if !existed {
            // The file's name must survive a crash as its first line does.
            state_file::sync_dir_of(&self.path)?;
        }
        cut_short_tail(&file)?;
        Ok(file)
    }

    /// Writes the live records alone (temp file, fsync, rename), and appends from there.
    fn compact(&self, state: &mut State) -> std::io::Result<()> {
        self.rewrite(state)?;
        state.file = Some(append_to(&self.path, false)?);
        Ok(())
    }

    fn rewrite(&self, state: &mut State) -> std::io::Result<()> {
        let mut all: Vec<&Record> = state.records.values().collect();
        all.sort_by_key(|r| r.at);
        let mut bytes = Vec::new();
        for record in &all {
            serde_json::to_writer(&mut bytes, record).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
        }
        state_file::write_atomic(&self.path, &bytes)?;
        state.lines = all.len();
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `path` opened to append (and read its tail), never through a link.
fn append_to(path: &Path, create: bool) -> std::io::Result<File> {
    File::options()
        .read(true)
        .append(true)
        .create(create)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Cuts `file` back to the end of its last whole line.
fn cut_short_tail(mut file: &File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut bytes)?;
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    file.set_len(keep as u64)?;
    file.sync_data()
}

/// The records in the file; none when nothing is at its path. A last line cut short (a crash
/// while it was appended, before its create was sent) is left out; any other line that does
/// not read as a record is an error naming it.
fn read_records(path: &Path) -> Result<Vec<Record>, LedgerError> {
    let err = |message: String| LedgerError::Read {
        path: path.to_owned(),
        message,
    };
    let Some(bytes) = state_file::read(path).map_err(|e| err(e.to_string()))? else {
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

    use crate::fixtures::block_on;

    /// A create of `name` by the policy its name starts with (`nightly-1` → `nightly`).
    fn record(server: ServerId, name: &str, answer: Answer) -> Record {
        Record {
            server,
            policy: name.split('-').next().unwrap().into(),
            name: name.into(),
            at: "2025-01-15T02:30:00Z".parse().unwrap(),
            answer,
        }
    }

    fn sent(ledger: &Ledger, server: ServerId, name: &str) -> Option<Answer> {
        let policy = name.split('-').next().unwrap();
        ledger.sent(server, policy, name).map(|r| r.answer)
    }

    #[test]
    fn a_sent_create_is_remembered_across_a_restart_with_its_newest_answer() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        block_on(ledger.record(record(1, "a-1", Answer::Unknown))).unwrap();
        block_on(ledger.record(record(2, "a-1", Answer::Unknown))).unwrap();
        block_on(ledger.record(record(2, "a-1", Answer::Created))).unwrap();
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(sent(&ledger, 1, "a-1"), Some(Answer::Unknown));
        assert_eq!(sent(&ledger, 2, "a-1"), Some(Answer::Created));
        assert_eq!(sent(&ledger, 1, "a-2"), None);
        assert_eq!(sent(&ledger, 3, "a-1"), None);
        block_on(ledger.record(record(2, "a-1", Answer::Refused))).unwrap();
        assert_eq!(
            sent(&ledger, 2, "a-1"),
            None,
            "a refused create is forgotten"
        );
    }

    /// A create another process recorded after this one opened the ledger (before it took the
    /// state lock) is seen once the ledger is read again under the lock.
    #[test]
    fn a_create_recorded_by_another_process_before_the_lock_is_seen_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let late = Ledger::open(dir.path()).unwrap();
        {
            let other = Ledger::open(dir.path()).unwrap();
            block_on(other.record(record(1, "a-1", Answer::Unknown))).unwrap();
        }
        assert_eq!(sent(&late, 1, "a-1"), None);
        late.reload().unwrap();
        assert_eq!(sent(&late, 1, "a-1"), Some(Answer::Unknown));
    }

    /// However often other policies on the server create, a policy's newest create stays.
    #[test]
    fn a_busier_policy_on_the_server_does_not_push_another_policys_create_out() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        block_on(ledger.record(record(1, "daily-1", Answer::Unknown))).unwrap();
        for i in 0..100 {
            let name = format!("minutely-{i}");
            block_on(ledger.record(record(1, &name, Answer::Unknown))).unwrap();
            block_on(ledger.record(record(1, &name, Answer::Created))).unwrap();
        }
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(sent(&ledger, 1, "daily-1"), Some(Answer::Unknown));
        assert_eq!(sent(&ledger, 1, "minutely-99"), Some(Answer::Created));
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_left_out_and_any_other_bad_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_string(&record(1, "a-1", Answer::Unknown)).unwrap();
        fs::write(
            dir.path().join(FILE_NAME),
            format!("{good}\n{{\"server\":2,\"na"),
        )
        .unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(sent(&ledger, 1, "a-1").is_some());

        fs::write(dir.path().join(FILE_NAME), format!("garbage\n{good}\n")).unwrap();
        let e = Ledger::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(FILE_NAME) && e.contains("line 1") && e.contains("nothing is done"),
            "{e}"
        );
    }

    /// The next record after a line cut short starts a line of its own: the ledger still
    /// reads, with every record in it.
    #[test]
    fn a_record_after_a_line_cut_short_is_not_glued_onto_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_string(&record(1, "a-1", Answer::Created)).unwrap();
        fs::write(
            dir.path().join(FILE_NAME),
            format!("{good}\n{{\"server\":2,\"na"),
        )
        .unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        block_on(ledger.record(record(2, "b-1", Answer::Unknown))).unwrap();

        let ledger = Ledger::open(dir.path()).expect("the ledger reads after the append");
        assert_eq!(sent(&ledger, 1, "a-1"), Some(Answer::Created));
        assert_eq!(sent(&ledger, 2, "b-1"), Some(Answer::Unknown));
    }

    /// A link where the ledger should be is not written through (root's `once` would append
    /// to, or cut short, whatever file the owner of `state_dir` pointed it at).
    #[test]
    fn a_link_where_the_ledger_should_be_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "not json without newline").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(FILE_NAME)).unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();

        let refused = block_on(ledger.record(record(1, "a-1", Answer::Unknown)));

        assert!(refused.is_err(), "a create recorded through a link");
        assert_eq!(
            fs::read_to_string(&victim).unwrap(),
            "not json without newline"
        );
    }

    #[test]
    fn a_directory_where_the_ledger_should_be_is_an_error_not_an_empty_ledger() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(FILE_NAME)).unwrap();
        let e = Ledger::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("a directory, not a file"), "{e}");
        let e = Ledger::detached(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("a directory, not a file"),
            "a dry run reads it too: {e}"
        );
    }

    #[test]
    fn the_file_is_written_again_with_the_live_records_once_it_grew_well_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        for i in 0..3_000u64 {
            let name = format!("p{}-{i}", i % 4);
            block_on(ledger.record(record(i % 10, &name, Answer::Unknown))).unwrap();
            block_on(ledger.record(record(i % 10, &name, Answer::Created))).unwrap();
        }
        let lines = fs::read_to_string(ledger.path()).unwrap().lines().count();
        assert!(lines <= 4 * 40 + 1024, "{lines} lines for 40 live records");
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(sent(&ledger, 9, "p3-2999"), Some(Answer::Created));
        assert_eq!(
            sent(&ledger, 9, "p1-9"),
            None,
            "older than its policy's newest"
        );
    }
}
