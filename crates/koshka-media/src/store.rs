//! The store: every volume of this process, the current (writable) volume, and the sync thread.
//!
//! Uploads go to the highest-numbered volume; when it cannot take the next batch it becomes
//! read-only and volume `n + 1` is created (up to [`VOLUMES_MAX`]). Volume `v` keeps its file
//! `vol_<v>.dat` in every data directory; reads try directory `v mod dirs` first, so even
//! volumes read from the first directory and odd ones from the second (VK's rule).
//!
//! Durability (as the rest of koshka): `everysec` (default) fsyncs dirty volumes once a second
//! from a background thread and acknowledges an upload once it is in the page cache of every
//! copy; `always` acknowledges after an fsync covering it, with group commit: every upload
//! waiting while one fsync runs is covered by the next one; `none` never fsyncs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::limits::VOLUMES_MAX;
use crate::needle::ContentType;
use crate::volume::{file_name, Volume, VolumeError, VolumeStats};

/// When uploads are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before acknowledging (group commit).
    Always,
    /// fsync once a second.
    Everysec,
    /// Never fsync (tests, caches).
    None,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Self::Always),
            "everysec" => Ok(Self::Everysec),
            "none" => Ok(Self::None),
            _ => Err(format!("durability is always | everysec | none, not {s:?}")),
        }
    }
}

/// Store configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// One or two data directories.
    pub dirs: Vec<PathBuf>,
    /// Volume size limit.
    pub volume_size: u64,
    /// Durability mode.
    pub durability: Durability,
}

#[derive(Default)]
struct SyncState {
    requested: u64,
    done: u64,
    failed: Option<String>,
}

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// Every volume is full.
    #[error("storage full: {0} volumes")]
    Full(u32),
    /// A write or fsync failed; writes are stopped until restart.
    #[error("writes stopped: {0}")]
    Stopped(String),
}

/// Every volume of this process.
pub struct Store {
    config: StoreConfig,
    volumes: RwLock<BTreeMap<u32, Arc<Volume>>>,
    roll: Mutex<()>,
    stopped: Mutex<Option<String>>,
    sync: Mutex<SyncState>,
    sync_wake: Condvar,
    sync_done: Condvar,
}

impl Store {
    /// Opens every volume found in the data directories (creating volume 1 if there is none)
    /// and starts the sync thread.
    ///
    /// # Errors
    /// Unreadable directories or volumes.
    pub fn open(config: StoreConfig) -> anyhow::Result<Arc<Store>> {
        anyhow::ensure!(
            (1..=2).contains(&config.dirs.len()),
            "koshka media takes one or two data directories, not {}",
            config.dirs.len()
        );
        if config.dirs.len() == 1 {
            tracing::warn!("one data directory: every volume has a single copy");
        }
        let mut ids = std::collections::BTreeSet::new();
        for dir in &config.dirs {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("data directory {}: {e}", dir.display()))?;
            for entry in std::fs::read_dir(dir)? {
                let name = entry?.file_name();
                let name = name.to_string_lossy();
                if let Some(id) = name
                    .strip_prefix("vol_")
                    .and_then(|n| n.strip_suffix(".dat"))
                    .and_then(|n| n.parse::<u32>().ok())
                {
                    ids.insert(id);
                }
            }
        }
        if ids.is_empty() {
            ids.insert(1);
        }
        let last = ids.iter().next_back().copied().unwrap_or(1);
        let mut volumes = BTreeMap::new();
        let mut stopped = None;
        for id in ids {
            let v = Volume::open(
                id,
                &Self::paths(&config.dirs, id),
                config.volume_size,
                id != last,
            )?;
            if let Some(why) = v.unwritable().first() {
                stopped.get_or_insert_with(|| why.clone());
            }
            volumes.insert(id, Arc::new(v));
        }
        if let Some(why) = &stopped {
            tracing::error!(%why, "a data directory refuses writes; writes stop, reads go on");
        }
        let store = Arc::new(Store {
            config,
            volumes: RwLock::new(volumes),
            roll: Mutex::new(()),
            stopped: Mutex::new(stopped),
            sync: Mutex::new(SyncState::default()),
            sync_wake: Condvar::new(),
            sync_done: Condvar::new(),
        });
        if store.config.durability != Durability::None {
            let weak = Arc::downgrade(&store);
            std::thread::Builder::new()
                .name("media-sync".into())
                .spawn(move || sync_loop(&weak))?;
        }
        Ok(store)
    }

    fn paths(dirs: &[PathBuf], id: u32) -> Vec<(usize, PathBuf)> {
        dirs.iter()
            .enumerate()
            .map(|(i, d)| (i, d.join(file_name(id))))
            .collect()
    }

    /// The durability mode.
    #[must_use]
    pub fn durability(&self) -> Durability {
        self.config.durability
    }

    /// The data directories.
    #[must_use]
    pub fn dirs(&self) -> &[PathBuf] {
        &self.config.dirs
    }

    /// Volume `id`.
    #[must_use]
    pub fn volume(&self, id: u32) -> Option<Arc<Volume>> {
        self.volumes.read().get(&id).cloned()
    }

    /// Every volume's counters, by id.
    #[must_use]
    pub fn stats(&self) -> Vec<VolumeStats> {
        let vols: Vec<Arc<Volume>> = self.volumes.read().values().cloned().collect();
        vols.iter().map(|v| v.stats()).collect()
    }

    /// Why writes are stopped, if they are.
    #[must_use]
    pub fn stopped(&self) -> Option<String> {
        self.stopped.lock().clone()
    }

    /// Stores `files` (one secret, one volume, consecutive local ids); blocks until durable
    /// under `always`. Returns the volume and the local ids.
    ///
    /// # Errors
    /// Storage full, or writes stopped after a failed write/fsync.
    pub fn put(
        &self,
        files: &[(&[u8], ContentType)],
        secret: u64,
    ) -> Result<(u32, Vec<u32>), PutError> {
        if let Some(why) = self.stopped() {
            return Err(PutError::Stopped(why));
        }
        loop {
            let current = {
                let vols = self.volumes.read();
                vols.values().next_back().cloned()
            };
            let Some(v) = current else {
                return Err(PutError::Full(0));
            };
            match v.append(files, secret) {
                Ok(lids) => {
                    self.wait_durable();
                    if let Some(why) = self.stopped() {
                        return Err(PutError::Stopped(why));
                    }
                    return Ok((v.id, lids));
                }
                Err(VolumeError::Full(_) | VolumeError::ReadOnly(_)) => self.roll(v.id, files)?,
                Err(e) => {
                    let why = e.to_string();
                    *self.stopped.lock() = Some(why.clone());
                    return Err(PutError::Stopped(why));
                }
            }
        }
    }

    /// As [`Store::put`] without ever waiting: `None` when the current volume is busy (another
    /// append, a flag change, a compaction), when it is full, or under `always` durability;
    /// the caller then runs [`Store::put`] on a blocking thread.
    pub fn try_put(
        &self,
        files: &[(&[u8], ContentType)],
        secret: u64,
    ) -> Option<Result<(u32, Vec<u32>), PutError>> {
        if self.config.durability == Durability::Always {
            return None;
        }
        if let Some(why) = self.stopped() {
            return Some(Err(PutError::Stopped(why)));
        }
        let v = self.volumes.read().values().next_back().cloned()?;
        match v.try_append(files, secret)? {
            Ok(lids) => {
                self.wait_durable();
                Some(Ok((v.id, lids)))
            }
            Err(VolumeError::Full(_) | VolumeError::ReadOnly(_)) => None,
            Err(e) => {
                let why = e.to_string();
                *self.stopped.lock() = Some(why.clone());
                Some(Err(PutError::Stopped(why)))
            }
        }
    }

    /// Makes volume `full + 1` the current one (if `full` still is).
    fn roll(&self, full: u32, files: &[(&[u8], ContentType)]) -> Result<(), PutError> {
        let _g = self.roll.lock();
        let last = self.volumes.read().keys().next_back().copied().unwrap_or(0);
        if last != full {
            return Ok(());
        }
        let total: u64 = files
            .iter()
            .map(|(d, _)| crate::needle::record_len(u32::try_from(d.len()).unwrap_or(u32::MAX)))
            .sum();
        if total + crate::needle::HEADER_LEN as u64 > self.config.volume_size {
            return Err(PutError::Stopped(format!(
                "{total} bytes never fit a volume of {} bytes",
                self.config.volume_size
            )));
        }
        if full >= VOLUMES_MAX {
            return Err(PutError::Full(full));
        }
        if let Some(v) = self.volume(full) {
            v.set_read_only();
        }
        let id = full + 1;
        let v = Volume::open(
            id,
            &Self::paths(&self.config.dirs, id),
            self.config.volume_size,
            false,
        )
        .map_err(|e| {
            let why = e.to_string();
            tracing::error!(%why, "cannot create the next volume; writes stop");
            *self.stopped.lock() = Some(why.clone());
            PutError::Stopped(why)
        })?;
        tracing::info!(vol = full, next = id, "volume full; now read-only");
        let unwritable = v.unwritable().first().cloned();
        self.volumes.write().insert(id, Arc::new(v));
        if let Some(why) = unwritable {
            // Created in the writable directory only; a restart with both writable rebuilds
            // the other copy.
            tracing::error!(%why, "a data directory refuses writes; writes stop, reads go on");
            *self.stopped.lock() = Some(why.clone());
            return Err(PutError::Stopped(why));
        }
        Ok(())
    }

    fn wait_durable(&self) {
        match self.config.durability {
            Durability::Always => {
                let mut s = self.sync.lock();
                s.requested += 1;
                let ticket = s.requested;
                self.sync_wake.notify_one();
                while s.done < ticket && s.failed.is_none() {
                    self.sync_done.wait(&mut s);
                }
            }
            Durability::Everysec => {
                let mut s = self.sync.lock();
                s.requested += 1;
            }
            Durability::None => {}
        }
    }

    /// Compacts volume `id` (blocking; run it on a blocking thread). Returns bytes before and
    /// after.
    ///
    /// # Errors
    /// See [`Volume::compact`]; an unknown volume is [`VolumeError::Missing`].
    pub fn compact(&self, id: u32) -> Result<(u64, u64), VolumeError> {
        let v = self.volume(id).ok_or(VolumeError::Missing)?;
        v.compact(&free_bytes)
    }

    fn sync_all(&self) -> Result<(), String> {
        let vols: Vec<Arc<Volume>> = self.volumes.read().values().cloned().collect();
        for v in vols {
            v.sync()
                .map_err(|e| format!("volume {}: fsync failed: {e}", v.id))?;
        }
        Ok(())
    }
}

/// Bytes available to unprivileged users in the file system holding `dir`.
#[must_use]
pub fn free_bytes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir).map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize))
}

fn sync_loop(store: &std::sync::Weak<Store>) {
    loop {
        let Some(s) = store.upgrade() else { return };
        let target = if s.config.durability == Durability::Always {
            let mut st = s.sync.lock();
            while st.requested == st.done {
                s.sync_wake.wait_for(&mut st, Duration::from_secs(1));
            }
            st.requested
        } else {
            drop(s);
            std::thread::sleep(Duration::from_secs(1));
            let Some(s2) = store.upgrade() else { return };
            let t = s2.sync.lock().requested;
            s2.sync_once(t);
            continue;
        };
        s.sync_once(target);
    }
}

impl Store {
    fn sync_once(&self, target: u64) {
        let result = self.sync_all();
        let mut st = self.sync.lock();
        if let Err(why) = result {
            tracing::error!(%why, "fsync failed; writes stop");
            *self.stopped.lock() = Some(why.clone());
            st.failed = Some(why);
        }
        st.done = st.done.max(target);
        self.sync_done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::volume::tests::{make_unwritable, make_writable};

    #[test]
    fn an_unwritable_directory_at_start_stops_writes_and_reads_go_on() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            dirs: vec![a.path().to_owned(), b.path().to_owned()],
            volume_size: 1 << 20,
            durability: Durability::Everysec,
        };
        let store = Store::open(config.clone()).unwrap();
        let (vol, lids) = store.put(&[(b"kept", ContentType::Text)], 5).unwrap();
        assert!(store.stopped().is_none());
        drop(store);
        let copy = b.path().join(file_name(vol));
        if !make_unwritable(&copy) {
            eprintln!("SKIPPED: cannot make a file unwritable here (chattr +i or chmod)");
            return;
        }
        let store = Store::open(config.clone());
        let result = store.as_ref().map(|s| {
            let why = s.stopped().unwrap_or_default();
            let put = s.put(&[(b"new", ContentType::Text)], 6);
            let quick = s.try_put(&[(b"new", ContentType::Text)], 6);
            let read = s.volume(vol).unwrap().read(lids[0], None).unwrap().data;
            (why, put, quick, read)
        });
        make_writable(&copy);
        let (why, put, quick, read) = result.unwrap();
        assert!(why.contains(&copy.display().to_string()), "{why}");
        assert!(matches!(put, Err(PutError::Stopped(_))));
        assert!(matches!(quick, Some(Err(PutError::Stopped(_)))));
        assert_eq!(&read[..], b"kept");
        drop(store);
        let store = Store::open(config).unwrap();
        assert!(store.stopped().is_none());
        store.put(&[(b"new", ContentType::Text)], 6).unwrap();
    }
}
