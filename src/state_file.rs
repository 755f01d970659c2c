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
    let tmp = temp_path(path);
    let written = write_new(&tmp, bytes).and_then(|file| file.sync_all());
    let renamed = written.and_then(|()| fs::rename(&tmp, path));
    if renamed.is_err() {
        // Not left behind for the next write (or the health probe) to trip over.
        let _ = fs::remove_file(&tmp);
    }
    renamed?;
    sync_dir_of(path)
}

/// Where [`write_atomic`] writes `path`'s next contents before renaming them over it.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Writes `bytes` to a new file at `tmp`, whatever was there: a leftover file, a FIFO or a
/// link is removed first (opening a FIFO would wait for a reader forever; a link would have its
/// target overwritten), and the file is created anew, never through a link. A directory there
/// is an error.
pub fn write_new(tmp: &Path, bytes: &[u8]) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match fs::symlink_metadata(tmp) {
        Ok(meta) if meta.is_dir() => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{} is a directory", tmp.display()),
            ))
        }
        Ok(_) => fs::remove_file(tmp)?,
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(tmp)?;
    file.write_all(bytes)?;
    Ok(file)
}

/// Makes a file's name (just created or renamed) survive a crash.
pub fn sync_dir_of(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
