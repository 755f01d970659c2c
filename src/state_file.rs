//! Files in `state_dir` that must survive a crash: written so that a crash leaves either the
//! old or the new file, and read so that anything at their path that is not a regular file is
//! an error (never "empty", never a hang).

use std::fs::{self, File};
use std::io::{Error, ErrorKind, Write};
use std::path::{Path, PathBuf};

/// The bytes of the file at `path`; `None` only when nothing at all is there. A directory, a
/// link to nowhere, a FIFO or a file this user may not read is an error.
pub fn read(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    // Following a link: one to nowhere is "not found" about its target, not the file.
    let kind = fs::metadata(path)?.file_type();
    if !kind.is_file() {
        // Checked before opening: opening a FIFO would wait for a writer forever.
        return Err(Error::new(
            ErrorKind::InvalidData,
            if kind.is_dir() {
                "a directory, not a file"
            } else {
                "not a regular file"
            },
        ));
    }
    fs::read(path).map(Some)
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file: temp
/// file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir_of(path)
}

/// Makes a file's name (just created or renamed) survive a crash.
pub fn sync_dir_of(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
