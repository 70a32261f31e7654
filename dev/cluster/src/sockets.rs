//! Where the dev Workload API puts its sockets, and the check that nobody
//! else can reach them.

use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use spike_dev_identity::{IdentitySpec, MAX_SOCKET_PATH};

/// Room kept for an identity's socket file name (`lite-workload.sock` is 18
/// bytes; process names are shorter).
const SOCKET_NAME_ROOM: usize = 24;

/// No usable sockets directory.
#[derive(Debug, thiserror::Error)]
pub enum SocketsError {
    /// Both candidates are too long for a unix socket path: the caller's
    /// `--dir` or `TMPDIR` is too deep.
    #[error(
        "no directory for the Workload API sockets: {} and {} are both too long for a unix \
         socket path ({MAX_SOCKET_PATH} bytes); use a shorter --dir or TMPDIR",
        inside.display(),
        outside.display()
    )]
    TooLong {
        /// The directory in the cluster directory.
        inside: PathBuf,
        /// The one in the temporary directory.
        outside: PathBuf,
    },
    /// The directory cannot be made (permissions, a file in the way).
    #[error("cannot create {}: {source}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The directory was made but cannot be looked at.
    #[error("cannot inspect {}: {source}", path.display())]
    Inspect {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Someone else's directory, or one others may enter, is in the way:
    /// it could let them serve identities to the cluster.
    #[error(
        "{} is not a private directory of this user (a directory, mode 0700, owned by uid \
         {uid}); remove it and try again",
        path.display()
    )]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// This user.
        uid: u32,
    },
}

/// `identities/sockets` in the cluster directory when every socket path
/// there fits a unix socket address (107 bytes), otherwise a private
/// directory in the system's temporary directory named after the cluster
/// directory. A deep checkout (a CI workspace, a long `--dir`) would
/// otherwise leave the cluster without identities.
pub fn choose(dir: &Path, workloads: &[IdentitySpec]) -> Result<PathBuf, SocketsError> {
    let longest_name = workloads
        .iter()
        .map(|spec| spec.name.len() + ".sock".len())
        .fold(SOCKET_NAME_ROOM, usize::max);
    let fits = |sockets: &Path| sockets.as_os_str().len() + 1 + longest_name <= MAX_SOCKET_PATH;
    let inside = dir.join("identities").join("sockets");
    if fits(&inside) {
        return Ok(inside);
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    let outside = std::env::temp_dir().join(format!("spike-sockets-{:016x}", hasher.finish()));
    if !fits(&outside) {
        return Err(SocketsError::TooLong { inside, outside });
    }
    Ok(outside)
}

/// Makes `sockets` a directory only this user can enter, or refuses one
/// that is not: in a shared temporary directory, a directory someone else
/// made first could let them serve identities to the cluster.
pub fn make_private(sockets: &Path) -> Result<(), SocketsError> {
    make_owned(sockets, 0o700, 0o077)
}

/// Makes `sockets` a directory this user owns that others may pass
/// through but neither list nor write (0711), as SPIRE agents' sockets
/// are reached by every workload of the host; the cluster directory `dir`,
/// and the sockets directory's parent inside it, become passable too (the
/// keepers and replicas run as users of their own).
pub fn make_reachable(dir: &Path, sockets: &Path) -> Result<(), SocketsError> {
    use std::os::unix::fs::PermissionsExt;
    make_owned(sockets, 0o711, 0o066)?;
    let mut chain = vec![sockets, dir];
    chain.extend(sockets.parent().filter(|parent| parent.starts_with(dir)));
    for path in chain {
        fs::set_permissions(path, fs::Permissions::from_mode(0o711)).map_err(|source| {
            SocketsError::Create {
                path: path.to_owned(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Creates `sockets` with `mode` if missing, then refuses it unless it is a
/// directory of this user's with none of the `forbidden` mode bits.
fn make_owned(sockets: &Path, mode: u32, forbidden: u32) -> Result<(), SocketsError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(sockets)
        .map_err(|source| SocketsError::Create {
            path: sockets.to_owned(),
            source,
        })?;
    let metadata = fs::symlink_metadata(sockets).map_err(|source| SocketsError::Inspect {
        path: sockets.to_owned(),
        source,
    })?;
    let uid = rustix::process::geteuid().as_raw();
    if !metadata.is_dir() || metadata.uid() != uid || metadata.mode() & forbidden != 0 {
        return Err(SocketsError::NotPrivate {
            path: sockets.to_owned(),
            uid,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_stay_in_the_cluster_directory_unless_it_is_too_deep() {
        let short = Path::new("/var/lib/spike-local");
        assert_eq!(
            choose(short, &[]).expect("short"),
            short.join("identities").join("sockets")
        );
        let deep = PathBuf::from(format!("/{}", "d".repeat(80)));
        let outside = choose(&deep, &[]).expect("deep");
        assert!(
            outside.starts_with(std::env::temp_dir()),
            "{}",
            outside.display()
        );
        assert!(outside.as_os_str().len() + 1 + SOCKET_NAME_ROOM <= MAX_SOCKET_PATH);
        assert_eq!(
            choose(&deep, &[]).expect("deep"),
            outside,
            "stable per directory"
        );
        let other = PathBuf::from(format!("/{}", "e".repeat(80)));
        assert_ne!(choose(&other, &[]).expect("other"), outside);
        // A workload name that fits nowhere is refused before anything runs.
        let long_name = IdentitySpec::parse(&format!("{}=/app/x", "w".repeat(100)));
        if let Ok(spec) = long_name {
            assert!(choose(short, &[spec]).is_err());
        }
    }

    #[test]
    fn a_sockets_directory_others_can_enter_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("spike-cluster-test-{}", std::process::id()));
        let sockets = root.join("sockets");
        make_private(&sockets).expect("a fresh directory is made private");
        let mode = fs::metadata(&sockets).expect("made").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        make_private(&sockets).expect("and found private again");
        fs::set_permissions(&sockets, fs::Permissions::from_mode(0o755)).expect("chmod");
        let refused = make_private(&sockets).expect_err("others may enter it");
        assert!(
            refused.to_string().contains("not a private directory"),
            "{refused}"
        );
        fs::remove_dir_all(&root).expect("clean up");
    }
}
