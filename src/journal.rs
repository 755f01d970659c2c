//! The power journal: a file in `state_dir` that remembers every server this program stopped,
//! written (temp file, fsync, rename) *before* the stop request goes out. Whatever happens next
//! (error, timeout, SIGTERM, SIGKILL, power loss), the next start finds the entry and starts
//! the server again once its snapshot has left `in_progress`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ledger::{Ledger, LedgerError};
use crate::model::ServerId;
use crate::shared::{SharedError, SharedState};
use crate::state_file::{self, write_atomic};

const FILE_NAME: &str = "power-journal.json";

/// With `[ha]`: an entry's key, under the cluster's prefix.
const SHARED_SECTION: &str = "journal/";

fn shared_key(server: ServerId) -> String {
    format!("{SHARED_SECTION}{server}")
}

/// "Stopped server S for snapshot N at T; stop waiting for N at `deadline`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub server: ServerId,
    pub policy: String,
    pub snapshot: String,
    pub stopped_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal is there but cannot be read. Read as "no entries", it would let this start
    /// forget a server the last one stopped, so nothing acts without it.
    #[error(
        "power journal {} cannot be read: {source}; it lists the servers a previous run \
         stopped, so nothing is done without it. Fix its owner, mode or contents (JSON); move \
         it away only once every server it lists runs again",
        path.display()
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("power journal {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Creates(#[from] LedgerError),
    #[error("power journal (shared): {0}")]
    Shared(#[from] SharedError),
}

/// Why the state directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "state lock {}: {source}; snapshot-scheduler does not act without it. The user it runs \
         as must be able to read that file, or to create it in {}: fix the file's owner or mode, \
         or remove it while no snapshot-scheduler runs",
        path.display(),
        path.parent().unwrap_or(path).display()
    )]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// The entries as on disk; the lock also serialises writers within this process.
    entries: Mutex<Vec<Entry>>,
    /// Woken by every new entry, so whoever settles orphaned entries can sleep while there
    /// are none instead of polling.
    recorded: tokio::sync::Notify,
    /// `state_dir/lock`, held (flock) by the one process allowed to act on this journal.
    lock: std::sync::OnceLock<File>,
    /// Every create sent, beside every stop: what a crash or a lost answer must not forget.
    creates: Ledger,
    /// With `[ha]`: the entries live there (written fenced), not in `state_dir`.
    shared: Option<Arc<dyn SharedState>>,
    /// Writers one at a time (a shared write is awaited without holding `entries`).
    writes: tokio::sync::Mutex<()>,
}

impl Journal {
    /// Opens (creating `state_dir` if needed) and reads the journal.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join(FILE_NAME);
        fs::create_dir_all(state_dir).map_err(|source| JournalError::Write {
            path: path.clone(),
            source,
        })?;
        let entries = read_entries(&path)?;
        Ok(Self::with(
            state_dir,
            entries,
            Ledger::open(state_dir)?,
            None,
        ))
    }

    fn with(
        state_dir: &Path,
        entries: Vec<Entry>,
        creates: Ledger,
        shared: Option<Arc<dyn SharedState>>,
    ) -> Self {
        Self {
            path: state_dir.join(FILE_NAME),
            entries: Mutex::new(entries),
            recorded: tokio::sync::Notify::new(),
            lock: std::sync::OnceLock::new(),
            creates,
            shared,
            writes: tokio::sync::Mutex::new(()),
        }
    }

    /// A journal that is neither read nor created, for a dry run: it changes nothing, so it
    /// must not need the state directory, let alone create it (as root, 0755) or write to it.
    /// Its create ledger is read, if there is one: `plan` says what the run would.
    pub fn detached(state_dir: &Path) -> Result<Self, JournalError> {
        Ok(Self::with(
            state_dir,
            Vec::new(),
            Ledger::detached(state_dir)?,
            None,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the journal could not be written now, if it could not: its temp file is written
    /// and removed, the journal itself left alone. A stop needs a journal entry first, so a
    /// journal that cannot be written is worth knowing before the next stop (`/healthz` asks on
    /// every wake of the scheduler). With `[ha]` the journal lives in the cluster, whose writes
    /// answer for themselves (a host that cannot write there does not lead): `None`.
    pub fn write_error(&self) -> Option<String> {
        if self.shared.is_some() {
            return None;
        }
        // A write of the journal under way in another task owns the temp file (and tells by
        // itself whether it got through): leave it be.
        let _turn = self.writes.try_lock().ok()?;
        // The rename's target too: a directory (or a FIFO) where the journal should be takes
        // every write, though its temp file can be written.
        let target = match fs::symlink_metadata(&self.path) {
            Ok(meta) if !meta.is_file() && !meta.is_symlink() => Err(std::io::Error::other(
                "not a regular file, so no write can replace it",
            )),
            _ => Ok(()),
        };
        let tmp = state_file::temp_path(&self.path);
        target
            .and_then(|()| {
                serde_json::to_vec_pretty(&self.entries()).map_err(std::io::Error::other)
            })
            .and_then(|b| state_file::write_new(&tmp, &b))
            .and_then(|_| fs::remove_file(&tmp))
            .err()
            .map(|e| format!("power journal {}: {e}", self.path.display()))
    }

    /// The creates sent, and their answers.
    pub fn creates(&self) -> &Ledger {
        &self.creates
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.lock().clone()
    }

    /// The journal and create ledger of a cluster (`[ha]`): written fenced to `shared`, read
    /// from it by [`Journal::load_shared`] when this host takes the lead. `state_dir` names
    /// nothing here but appears in messages.
    pub fn shared(state_dir: &Path, shared: Arc<dyn SharedState>) -> Self {
        let creates = Ledger::shared(state_dir, shared.clone());
        Self::with(state_dir, Vec::new(), creates, Some(shared))
    }

    /// With `[ha]`, when this host takes the lead: every stop and create the cluster recorded
    /// (a host that led before may have left a server stopped, or a create unanswered).
    pub async fn load_shared(&self) -> Result<(), JournalError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let mut entries = Vec::new();
        for (key, value) in shared.read(SHARED_SECTION).await? {
            match serde_json::from_str::<Entry>(&value) {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    return Err(JournalError::Shared(SharedError::Unavailable(format!(
                        "{key} is not a journal entry: {e}"
                    ))))
                }
            }
        }
        self.creates.load_shared().await?;
        let found = !entries.is_empty();
        self.replace(entries);
        if found {
            self.recorded.notify_one();
        }
        Ok(())
    }

    /// Durably records an entry (replacing one for the same server). Only after this returns
    /// `Ok` may the server be stopped. With `[ha]` it is one fenced write: a host that no
    /// longer leads records nothing, and so stops nothing.
    pub async fn record(&self, entry: Entry) -> Result<(), JournalError> {
        let _turn = self.writes.lock().await;
        let mut next = self.entries();
        next.retain(|e| e.server != entry.server);
        next.push(entry.clone());
        match &self.shared {
            Some(shared) => {
                let value = serde_json::to_string(&entry)
                    .map_err(|e| JournalError::Shared(SharedError::Unavailable(e.to_string())))?;
                shared
                    .write(vec![(shared_key(entry.server), value)], Vec::new())
                    .await?;
            }
            None => self.write(&next)?,
        }
        self.replace(next);
        self.recorded.notify_one();
        Ok(())
    }

    /// Takes the state directory for this process: `Ok(false)` when another process (the
    /// daemon, another `once`) holds it. Two processes acting on one journal would each keep
    /// their own copy and overwrite the other's entries, so there is no acting without the
    /// lock: a lock file that can be neither opened nor created is an error. The entries are
    /// read again once the lock is held, since another process may have written them after
    /// [`Journal::open`].
    pub fn try_lock(&self) -> Result<bool, LockError> {
        if self.lock.get().is_some() {
            return Ok(true);
        }
        let path = self.path.with_file_name("lock");
        let file = open_lock_file(&path).map_err(|source| LockError::Open {
            path: path.clone(),
            source,
        })?;
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a file descriptor this function owns; no memory is involved.
        let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !taken {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(false);
            }
            return Err(LockError::Open { path, source: e });
        }
        let entries = read_entries(&self.path)?;
        self.creates.reload().map_err(JournalError::from)?;
        let found = !entries.is_empty();
        self.replace(entries);
        if found {
            self.recorded.notify_one();
        }
        let _ = self.lock.set(file);
        Ok(true)
    }

    /// Resolves once an entry has been recorded since the last call (or right away if one was).
    pub async fn entry_recorded(&self) {
        self.recorded.notified().await;
    }

    /// With `[ha]`: `Ok` only while this host leads (one fenced transaction that writes
    /// nothing), checked right before a delete, which has no record of its own to write.
    /// Without `[ha]`, always `Ok`: the state lock is this process's.
    pub async fn fence(&self) -> Result<(), JournalError> {
        match &self.shared {
            Some(shared) => Ok(shared.write(Vec::new(), Vec::new()).await?),
            None => Ok(()),
        }
    }

    /// With `[ha]`, on a host that no longer leads: whether it may still start this server.
    /// Not when the cluster's journal holds another stop of it: the leader has settled this
    /// host's stop and stopped the server again for its own snapshot (recorded before that
    /// stop), which a start from here would break; the entry is forgotten here (the leader
    /// owns the server now). When the journal holds this stop, or none (the leader settled it
    /// and started the server, or etcd lost its keys: a wiped etcd must not leave the server
    /// stopped), or cannot be read, the start goes ahead: a server left stopped is the worse
    /// harm.
    pub async fn may_start(&self, server: ServerId) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        if shared.leads() {
            return true;
        }
        let Some(mine) = self.entries().into_iter().find(|e| e.server == server) else {
            return true;
        };
        let key = shared_key(server);
        let Ok(found) = shared.read(&key).await else {
            return true;
        };
        let another = found
            .iter()
            .any(|(k, v)| *k == key && serde_json::from_str::<Entry>(v).is_ok_and(|e| e != mine));
        if another {
            self.update(|entries| entries.retain(|e| e.server != server));
        }
        !another
    }

    /// Forgets the entry of a server that runs again.
    pub async fn clear(&self, server: ServerId) -> Result<(), JournalError> {
        let _turn = self.writes.lock().await;
        let mut next = self.entries();
        if !next.iter().any(|e| e.server == server) {
            return Ok(());
        }
        next.retain(|e| e.server != server);
        match &self.shared {
            Some(shared) => shared.write(Vec::new(), vec![shared_key(server)]).await?,
            None => self.write(&next)?,
        }
        self.replace(next);
        Ok(())
    }

    /// `snapshot_scheduler_servers_stopped` and `..._oldest_stop_age_seconds` from the
    /// entries now: called once the metrics are served, so both are there from the start (a
    /// server a previous process left stopped included); every change of the entries updates
    /// them after.
    pub fn export_stopped(&self) {
        self.update(|_| {});
    }

    /// The entries from now on.
    fn replace(&self, entries: Vec<Entry>) {
        self.update(|held| *held = entries);
    }

    /// Changes the entries; `snapshot_scheduler_servers_stopped` follows them.
    fn update(&self, change: impl FnOnce(&mut Vec<Entry>)) {
        let mut held = self.lock();
        change(&mut held);
        let oldest = held.iter().map(|e| e.stopped_at).min();
        crate::series::export_stopped(held.len(), oldest);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, entries: &[Entry]) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec_pretty(entries).map_err(std::io::Error::other);
        bytes
            .and_then(|b| write_atomic(&self.path, &b))
            .map_err(|source| JournalError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

/// The entries in the journal file; none only when nothing at all is at its path. Anything
/// there that does not read as a journal (a directory, a link to nowhere, a FIFO, bytes that
/// are not a JSON list of entries, a file this user may not read) is an error.
fn read_entries(path: &Path) -> Result<Vec<Entry>, JournalError> {
    use std::io::{Error, ErrorKind};
    let err = |source| JournalError::Read {
        path: path.to_owned(),
        source,
    };
    let Some(bytes) = state_file::read(path).map_err(err)? else {
        return Ok(Vec::new());
    };
    serde_json::from_slice(&bytes).map_err(|e| err(Error::new(ErrorKind::InvalidData, e)))
}

/// Opens the lock file read-only (flock needs no more, so a lock file another user left,
/// such as root's 0644 one, still serves), creating it (0644) if it does not exist.
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        opened => return opened,
    }
    match File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
    {
        // Another process created it in between.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => File::open(path),
        created => created,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::block_on;

    fn entry(server: ServerId) -> Entry {
        let t: DateTime<Utc> = "2025-01-15T02:30:00Z".parse().unwrap();
        Entry {
            server,
            policy: "nightly".into(),
            snapshot: "nightly-20250115T023000Z".into(),
            stopped_at: t,
            deadline: t + chrono::Duration::minutes(50),
        }
    }

    /// The `/healthz` probe, and every write, against what may lie at the temp file's path or
    /// the journal's: a FIFO neither hangs them (it hung the scheduler loop for good), a link
    /// never has its target overwritten (a root daemon wrote `[]` into it), and a directory
    /// where the journal should be is reported (the probe said healthy while every stop was
    /// refused).
    #[test]
    fn the_probe_and_the_writes_neither_hang_on_a_fifo_nor_write_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let tmp = state_file::temp_path(j.path());
        let mkfifo = |path: &Path| {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a NUL-terminated path that lives across the call.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        };
        mkfifo(&tmp);
        assert_eq!(
            j.write_error(),
            None,
            "a leftover FIFO is replaced, not waited on"
        );
        assert!(!tmp.exists());
        mkfifo(&tmp);
        block_on(j.record(entry(1))).expect("a write replaces a leftover FIFO");
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        assert_eq!(j.write_error(), None);
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        block_on(j.record(entry(2))).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(
            Journal::open(dir.path()).unwrap().entries(),
            [entry(1), entry(2)]
        );

        fs::remove_file(j.path()).unwrap();
        fs::create_dir(j.path()).unwrap();
        let error = j
            .write_error()
            .expect("a directory where the journal should be");
        assert!(error.contains("power-journal.json"), "{error}");
        assert!(block_on(j.record(entry(3))).is_err());
        assert!(!tmp.exists(), "a failed write leaves no temp file behind");
    }

    #[test]
    fn entries_survive_a_restart_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        block_on(j.record(entry(1))).unwrap();
        block_on(j.record(entry(2))).unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.entries(), [entry(1), entry(2)]);
        block_on(j.clear(1)).unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.entries(), [entry(2)]);
    }

    #[test]
    fn only_one_journal_of_a_state_dir_acts_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = Journal::open(dir.path()).unwrap();
        let second = Journal::open(dir.path()).unwrap();
        assert!(first.try_lock().unwrap());
        assert!(!second.try_lock().unwrap(), "a second process must not act");
        drop(first);
        assert!(
            second.try_lock().unwrap(),
            "free again once the first is gone"
        );
    }

    #[test]
    fn entries_written_by_another_process_before_the_lock_are_seen_after_it() {
        let dir = tempfile::tempdir().unwrap();
        // Opened (and read) while the journal was empty...
        let late = Journal::open(dir.path()).unwrap();
        {
            // ...then another process stops a server and exits before crashing or settling.
            let other = Journal::open(dir.path()).unwrap();
            assert!(other.try_lock().unwrap());
            block_on(other.record(entry(7))).unwrap();
        }
        assert!(late.try_lock().unwrap());
        assert_eq!(
            late.entries(),
            [entry(7)],
            "a stop journaled by another process was not seen: its server would stay stopped"
        );
    }

    #[test]
    fn no_lock_file_possible_is_an_error_naming_it_not_a_run_without_lock() {
        let dir = tempfile::tempdir().unwrap();
        // A dangling link into a directory that does not exist: the lock can be neither
        // opened nor created, by any user.
        std::os::unix::fs::symlink(dir.path().join("gone/lock"), dir.path().join("lock")).unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let err = j.try_lock().expect_err("went on without a lock");
        let text = err.to_string();
        assert!(
            text.contains(&dir.path().join("lock").display().to_string()),
            "{text}"
        );
    }

    /// A journal that exists but cannot be read is an error naming it, from [`Journal::open`]
    /// and from [`Journal::try_lock`]'s second read: taken as empty, it would let the next
    /// start forget a server the last one stopped.
    fn assert_unreadable_is_refused(dir: &Path, what: &str) {
        let path = dir.join(FILE_NAME).display().to_string();
        let err = Journal::open(dir).expect_err(&format!("{what}: read as an empty journal"));
        assert!(err.to_string().contains(&path), "{what}: {err}");
    }

    #[test]
    fn a_directory_where_the_journal_should_be_is_an_error_not_an_empty_journal() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(FILE_NAME)).unwrap();
        assert_unreadable_is_refused(dir.path(), "a directory");
    }

    #[test]
    fn a_journal_of_unreadable_bytes_is_an_error_not_an_empty_journal() {
        let whole = serde_json::to_vec(&[entry(1)]).unwrap();
        for (what, bytes) in [
            ("truncated", &whole[..whole.len() / 2]),
            ("not UTF-8", b"[\xff\xfe]".as_slice()),
            ("empty", b"".as_slice()),
            ("null", b"null".as_slice()),
            ("an object", b"{}".as_slice()),
        ] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(FILE_NAME), bytes).unwrap();
            assert_unreadable_is_refused(dir.path(), what);
        }
    }

    #[test]
    fn a_dangling_link_where_the_journal_should_be_is_an_error_not_an_empty_journal() {
        // The journal linked to a file on a filesystem that is not mounted: "not found" about
        // the link's target, not about the journal.
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("unmounted/power-journal.json");
        std::os::unix::fs::symlink(target, dir.path().join(FILE_NAME)).unwrap();
        assert_unreadable_is_refused(dir.path(), "a dangling link");
    }

    #[test]
    fn a_fifo_where_the_journal_should_be_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = std::ffi::CString::new(
            dir.path()
                .join(FILE_NAME)
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path and nothing else.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
        let (done, opened) = std::sync::mpsc::channel();
        let state_dir = dir.path().to_owned();
        std::thread::spawn(move || {
            let _ = done.send(Journal::open(&state_dir).map(|j| j.entries()));
        });
        let opened = opened
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening the journal hung on a FIFO, waiting for a writer");
        let err = opened.expect_err("a FIFO read as a journal");
        assert!(
            err.to_string()
                .contains(&dir.path().join(FILE_NAME).display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn an_unreadable_journal_says_why_nothing_is_done_and_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"[").unwrap();
        let text = Journal::open(dir.path()).unwrap_err().to_string();
        assert!(
            text.contains("cannot be read")
                && text.contains("servers a previous run stopped")
                && text.contains("nothing is done"),
            "{text}"
        );
    }

    #[test]
    fn a_journal_that_turns_unreadable_before_the_lock_is_an_error_not_an_empty_journal() {
        let dir = tempfile::tempdir().unwrap();
        let late = Journal::open(dir.path()).unwrap();
        fs::write(dir.path().join(FILE_NAME), b"[{\"server\": 7,").unwrap();
        let err = late.try_lock().expect_err("acted on an unreadable journal");
        let path = dir.path().join(FILE_NAME).display().to_string();
        assert!(err.to_string().contains(&path), "{err}");
    }

    #[test]
    fn an_unwritable_state_dir_refuses_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        // A directory where the journal file should be makes every write fail.
        fs::create_dir(dir.path().join("power-journal.json.tmp")).unwrap();
        assert!(block_on(j.record(entry(1))).is_err());
        assert!(j.entries().is_empty());
    }

    /// Only "nothing at the journal's path" is an empty journal: a path that cannot even be
    /// looked at (here its directory is a file; as another user, no permission on it) is an
    /// error, never an empty journal.
    #[test]
    fn a_journal_path_that_cannot_be_looked_at_is_an_error_not_an_empty_journal() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("state");
        std::fs::write(&not_a_dir, b"").unwrap();
        let read = read_entries(&not_a_dir.join("power-journal.json"));
        assert!(matches!(read, Err(JournalError::Read { .. })), "{read:?}");
    }
}
