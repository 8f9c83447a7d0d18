//! [`DirLock`]: one process per data directory.
//!
//! Two processes appending to the same segments would interleave records and break the log
//! for good, so a node takes this lock before it opens any engine in a data directory.
//!
//! ```text
//!  <dir>/LOCK   advisory flock(LOCK_EX | LOCK_NB) held for the life of the DirLock;
//!               content: the holder's PID in decimal and a newline (informative only)
//! ```
//! The lock belongs to the open file description, so it is released when the process exits
//! in any way (including `kill -9`): a stale `LOCK` file never blocks a restart. The file is
//! never deleted: deleting it would let a second process lock a fresh file while a third
//! still holds the old one. flock locks are per open file description, so a second
//! [`DirLock::acquire`] in the same process fails too.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Name of the lock file in a data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Longest PID text read back from a lock file; anything longer is not a PID.
const PID_TEXT_LEN_MAX: u64 = 32;

/// An exclusive lock on a data directory, held until dropped. See the module docs.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    dir: PathBuf,
    path: PathBuf,
}

impl DirLock {
    /// Locks `dir` (creating the directory if it does not exist) and records this process's
    /// PID in `<dir>/LOCK`. Touches nothing else in the directory.
    ///
    /// # Errors
    /// [`Error::DirInUse`] naming the directory and, when recorded, the holder's PID, if
    /// another process (or another `DirLock` in this one) holds the lock;
    /// [`Error::NotADirectory`] if `dir` exists and is not a directory; I/O errors.
    pub fn acquire(dir: &Path) -> Result<Self> {
        match std::fs::metadata(dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(Error::NotADirectory {
                    path: dir.to_path_buf(),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).ctx(dir)?;
            }
            Err(e) => return Err(Error::io(dir, e)),
        }
        let path = dir.join(LOCK_FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::DirInUse {
                    dir: dir.to_path_buf(),
                    pid: read_pid(&mut file),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        file.set_len(0).ctx(&path)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .ctx(&path)?;
        Ok(Self {
            file,
            dir: dir.to_path_buf(),
            path,
        })
    }

    /// The locked directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirLock {
    /// Clears the PID while still holding the lock (so nobody reads a stale one), then the
    /// lock goes with the file.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// The PID recorded in a lock file, if it holds one.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(PID_TEXT_LEN_MAX).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn second_acquire_fails_naming_the_directory_and_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let lock = DirLock::acquire(&dir).unwrap();
        assert!(dir.is_dir());
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(dir.join(LOCK_FILE_NAME)).unwrap(),
            format!("{pid}\n")
        );
        let err = DirLock::acquire(&dir).unwrap_err();
        assert!(
            matches!(&err, Error::DirInUse { dir: d, pid: Some(p) } if *d == dir && *p == pid),
            "{err:?}"
        );
        let text = err.to_string();
        assert_eq!(
            text,
            format!(
                "data directory {} is in use by koshka process {pid}",
                dir.display()
            )
        );
        // Nothing else was created in the directory.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [LOCK_FILE_NAME]);
        drop(lock);
        // Another test of this binary may fork a child (`flock(1)`) at any moment; until it
        // execs, the child holds copies of this process's descriptors, our lock among them
        // (flock locks follow the open file). Allow that window to pass.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let again = loop {
            match DirLock::acquire(&dir) {
                Ok(again) => break again,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        };
        assert_eq!(again.dir(), dir);
    }

    #[test]
    fn a_file_is_not_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = DirLock::acquire(&file).unwrap_err();
        assert!(matches!(&err, Error::NotADirectory { path } if *path == file));
        assert!(err.to_string().contains("is not a directory"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn unknown_holder_pid_still_names_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(tmp.path()).unwrap();
        // A holder that has not written its PID yet.
        std::fs::write(lock.path(), b"").unwrap();
        let err = DirLock::acquire(tmp.path()).unwrap_err();
        assert!(matches!(err, Error::DirInUse { pid: None, .. }), "{err:?}");
        assert!(err.to_string().contains(&tmp.path().display().to_string()));
    }

    /// Another process sees the lock (and, once dropped, can take it): checked with
    /// util-linux `flock(1)`, skipped when it is not installed.
    #[test]
    fn another_process_sees_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(tmp.path()).unwrap();
        let try_flock = || {
            std::process::Command::new("flock")
                .args(["-n", "-E", "75"])
                .arg(lock.path())
                .arg("true")
                .status()
        };
        let Ok(status) = try_flock() else {
            eprintln!("SKIPPED: flock(1) is not installed");
            return;
        };
        assert_eq!(status.code(), Some(75), "flock(1) took a held lock");
        let path = lock.path().to_path_buf();
        drop(lock);
        let status = std::process::Command::new("flock")
            .args(["-n", "-E", "75"])
            .arg(&path)
            .arg("true")
            .status()
            .unwrap();
        assert!(status.success(), "lock not released on drop: {status}");
    }
}
