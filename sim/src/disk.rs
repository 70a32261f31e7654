//! A disk that forgets, on a crash, everything not yet fsynced.
//!
//! Every redb database of every simulated replica lives here, keyed by its
//! path (which names the host). Writes land in the file's current image;
//! `sync_data` makes them durable. [`SimDisk::power_cut`] throws away each
//! of a host's files back to its durable image and disowns the handles the
//! dead process still holds, so whatever it does while being torn down
//! (redb flushes on drop) reaches nothing. That is harsher than `kill -9`
//! (which keeps the page cache) and models power loss: an acknowledged
//! write must survive it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use spike_nexus::disk::Disk;

/// Granularity of the record of unsynced writes.
const PAGE: u64 = 4096;

/// The simulated disk of every host.
#[derive(Debug, Default, Clone)]
pub struct SimDisk {
    files: Arc<Mutex<BTreeMap<PathBuf, Arc<Mutex<File>>>>>,
    /// Deliberately broken: `sync_data` succeeds and persists nothing, as
    /// a disk that lies about its write cache. A run with it must lose
    /// acknowledged writes to power loss, and be caught.
    lying: bool,
}

#[derive(Debug, Default)]
struct File {
    /// What a reader sees now.
    current: Vec<u8>,
    /// What survives a power cut.
    durable: Vec<u8>,
    /// Pages written since the last sync.
    dirty: BTreeSet<u64>,
    /// Bumped by every power cut; handles of older generations are dead.
    generation: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SimDisk {
    /// A disk whose fsyncs persist nothing (see the field).
    pub fn lying() -> Self {
        Self {
            lying: true,
            ..Self::default()
        }
    }

    /// Cuts the power of the host whose files live under `dir`: every one
    /// of them returns to its last synced state.
    pub fn power_cut(&self, dir: &Path) {
        for (path, file) in lock(&self.files).iter() {
            if path.starts_with(dir) {
                let mut file = lock(file);
                file.current = file.durable.clone();
                file.dirty.clear();
                file.generation += 1;
            }
        }
    }
}

impl Disk for SimDisk {
    fn open(&self, path: &Path) -> io::Result<Box<dyn redb::StorageBackend>> {
        let file = lock(&self.files)
            .entry(path.to_owned())
            .or_default()
            .clone();
        let generation = lock(&file).generation;
        Ok(Box::new(Backend {
            file,
            generation,
            lying: self.lying,
        }))
    }
}

/// One open database file, as one process sees it.
#[derive(Debug)]
struct Backend {
    file: Arc<Mutex<File>>,
    generation: u64,
    lying: bool,
}

impl Backend {
    /// The file, if this handle's process is still alive.
    fn file(&self) -> io::Result<MutexGuard<'_, File>> {
        let file = lock(&self.file);
        if file.generation != self.generation {
            return Err(io::Error::other("the host lost power"));
        }
        Ok(file)
    }
}

fn out_of_range(offset: u64, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("read of {len} bytes at {offset} is past the end"),
    )
}

impl redb::StorageBackend for Backend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file()?.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let file = self.file()?;
        let start = usize::try_from(offset).map_err(|_| out_of_range(offset, out.len()))?;
        let source = file
            .current
            .get(start..start + out.len())
            .ok_or_else(|| out_of_range(offset, out.len()))?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut file = self.file()?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let old = file.current.len();
        file.current.resize(len, 0);
        let (low, high) = (old.min(len) as u64, old.max(len) as u64);
        file.dirty.extend(low / PAGE..high.div_ceil(PAGE));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut file = self.file()?;
        if self.lying {
            return Ok(());
        }
        let File {
            current,
            durable,
            dirty,
            ..
        } = &mut *file;
        durable.resize(current.len(), 0);
        for page in std::mem::take(dirty) {
            let start = (page * PAGE) as usize;
            let end = (start + PAGE as usize).min(current.len());
            if start < end {
                durable[start..end].copy_from_slice(&current[start..end]);
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut file = self.file()?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + data.len();
        if file.current.len() < end {
            file.current.resize(end, 0);
        }
        file.current[start..end].copy_from_slice(data);
        if !data.is_empty() {
            file.dirty.extend(offset / PAGE..=(end as u64 - 1) / PAGE);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_cut_keeps_synced_writes_and_loses_the_rest() {
        let disk = SimDisk::default();
        let dir = Path::new("/sim/n1");
        let backend = disk.open(&dir.join("log.redb")).expect("open");
        backend.write(0, b"synced").expect("write");
        backend.sync_data().expect("sync");
        backend.write(5000, b"lost").expect("write");
        disk.power_cut(dir);
        assert!(backend.write(0, b"zombie").is_err(), "a dead handle wrote");
        let reopened = disk.open(&dir.join("log.redb")).expect("reopen");
        let mut head = [0u8; 6];
        reopened.read(0, &mut head).expect("read");
        assert_eq!(&head, b"synced");
        assert_eq!(reopened.len().expect("len"), 6);
    }

    #[test]
    fn a_lying_disk_loses_even_synced_writes() {
        let disk = SimDisk::lying();
        let dir = Path::new("/sim/n1");
        let backend = disk.open(&dir.join("log.redb")).expect("open");
        backend.write(0, b"acknowledged").expect("write");
        backend.sync_data().expect("sync");
        disk.power_cut(dir);
        let reopened = disk.open(&dir.join("log.redb")).expect("reopen");
        assert_eq!(reopened.len().expect("len"), 0);
    }

    #[test]
    fn other_hosts_keep_their_unsynced_writes() {
        let disk = SimDisk::default();
        let backend = disk.open(Path::new("/sim/n2/log.redb")).expect("open");
        backend.write(0, b"page cache").expect("write");
        disk.power_cut(Path::new("/sim/n1"));
        let mut out = [0u8; 10];
        backend.read(0, &mut out).expect("read");
        assert_eq!(&out, b"page cache");
    }
}
