//! Where the redb databases live: files, unless a simulator has installed
//! a disk of its own.
//!
//! The deterministic simulator keeps every replica's databases in memory
//! and decides what a crash loses (everything not yet fsynced), so it can
//! check that an acknowledged write survives `kill -9` and power loss.
//! Production never installs one.

use std::io;
use std::path::Path;
use std::sync::OnceLock;

/// A disk that opens a storage backend per database path.
pub trait Disk: Send + Sync + 'static {
    /// The backend holding the database at `path`, created empty if new.
    fn open(&self, path: &Path) -> io::Result<Box<dyn redb::StorageBackend>>;
}

static DISK: OnceLock<Box<dyn Disk>> = OnceLock::new();

/// A disk was already installed.
#[derive(Debug, thiserror::Error)]
#[error("a disk is already installed in this process")]
pub struct AlreadyInstalled;

/// Opens every later database of this process on `disk`. Only a simulator
/// calls this, once, before any replica starts.
pub fn install(disk: Box<dyn Disk>) -> Result<(), AlreadyInstalled> {
    DISK.set(disk).map_err(|_| AlreadyInstalled)
}

/// The installed disk's backend for `path`; `None` on real files.
pub(crate) fn backend_for(path: &Path) -> Option<io::Result<Installed>> {
    DISK.get().map(|disk| disk.open(path).map(Installed))
}

/// A backend of the installed disk (redb wants a sized type). Locking is
/// the disk's business: it hands one database to one replica at a time.
#[derive(Debug)]
pub(crate) struct Installed(Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for Installed {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }
}
