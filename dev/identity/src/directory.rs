//! The on-disk layout of a dev identity directory.
//!
//! ```text
//! <dir>/identities.json         trust domain and the name -> SPIFFE ID list
//! <dir>/ca/bundle.pem           dev CA certificate (the trust bundle)
//! <dir>/ca/ca.key               dev CA key (0600)
//! <dir>/svid/<name>/cert.pem    SVID certificate
//! <dir>/svid/<name>/key.pem     SVID key (0600)
//! <dir>/svid/<name>/bundle.pem  trust bundle (copy of ca/bundle.pem)
//! <dir>/sockets/<name>.sock     Workload API socket serving <name> (while running)
//! ```
//!
//! Directories are 0700: whoever can reach a socket or key file gets that
//! identity, as with a SPIRE agent socket.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spike_sdk::identity::Role;

use crate::ca::{CaError, DevCa};

/// Longest identity name (it becomes a file and socket name).
pub const NAME_LEN_MAX: usize = 64;

/// Errors creating or reading an identity directory.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Minting failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// `identities.json` is unreadable.
    #[error("{path} is not a valid identity manifest: {reason}")]
    Manifest {
        /// Its path.
        path: PathBuf,
        /// The parser's reason.
        reason: String,
    },
    /// The directory's CA belongs to another trust domain.
    #[error("{dir} holds a CA for trust domain {existing}, not {requested}")]
    TrustDomainMismatch {
        /// The directory.
        dir: PathBuf,
        /// The CA's trust domain.
        existing: String,
        /// The one asked for.
        requested: String,
    },
    /// An identity name or path is invalid.
    #[error("invalid identity {0}")]
    InvalidIdentity(String),
}

/// One identity the directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentitySpec {
    /// File-system name: lowercase letters, digits and dashes.
    pub name: String,
    /// The SPIFFE ID path, e.g. `/spike/nexus`.
    pub path: String,
}

impl IdentitySpec {
    /// Parses `NAME=PATH`, or a bare `PATH` whose name is its segments joined
    /// by dashes (`/app/billing` -> `app-billing`).
    pub fn parse(text: &str) -> Result<Self, DirectoryError> {
        let (name, path) = match text.split_once('=') {
            Some((name, path)) => (name.to_owned(), path.to_owned()),
            None => (
                text.trim_matches('/').replace('/', "-").to_lowercase(),
                text.to_owned(),
            ),
        };
        let spec = Self { name, path };
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), DirectoryError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= NAME_LEN_MAX
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(DirectoryError::InvalidIdentity(format!(
                "name {:?}: use 1 to {NAME_LEN_MAX} lowercase letters, digits or dashes",
                self.name
            )));
        }
        if !self.path.starts_with('/') || self.path.len() < 2 {
            return Err(DirectoryError::InvalidIdentity(format!(
                "path {:?}: a SPIFFE ID path starts with '/'",
                self.path
            )));
        }
        Ok(())
    }

    /// The identities of SPIKE's fixed roles, named after the role.
    pub fn roles() -> Vec<Self> {
        Role::ALL
            .into_iter()
            .map(|role| Self {
                name: role.name().to_owned(),
                path: role.path().to_owned(),
            })
            .collect()
    }
}

/// `identities.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The trust domain of every identity here.
    pub trust_domain: String,
    /// The identities, roles first.
    pub identities: Vec<IdentitySpec>,
}

impl Manifest {
    /// The full SPIFFE ID of `spec`.
    pub fn spiffe_id(&self, spec: &IdentitySpec) -> String {
        format!("spiffe://{}{}", self.trust_domain, spec.path)
    }
}

/// A dev identity directory.
#[derive(Debug, Clone)]
pub struct IdentityDirectory {
    root: PathBuf,
}

impl IdentityDirectory {
    /// The directory at `root` (nothing is read yet).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Creates (or refreshes) the directory: keeps an existing CA of the same
    /// trust domain, and mints SVIDs for every role, every identity already
    /// listed and every one in `extra`, valid for `ttl`.
    pub fn create(
        root: impl Into<PathBuf>,
        trust_domain: &str,
        extra: &[IdentitySpec],
        ttl: Duration,
    ) -> Result<Self, DirectoryError> {
        let directory = Self::at(root);
        make_private_dir(&directory.root)?;
        make_private_dir(&directory.root.join("ca"))?;
        let ca = if directory.ca_cert_path().exists() {
            let existing = directory.manifest()?;
            if existing.trust_domain != trust_domain {
                return Err(DirectoryError::TrustDomainMismatch {
                    dir: directory.root.clone(),
                    existing: existing.trust_domain,
                    requested: trust_domain.to_owned(),
                });
            }
            directory.load_ca()?
        } else {
            let ca = DevCa::generate(trust_domain)?;
            write_file(&directory.ca_cert_path(), ca.cert_pem().as_bytes(), 0o644)?;
            write_file(&directory.ca_key_path(), ca.key_pem().as_bytes(), 0o600)?;
            ca
        };

        let mut identities = IdentitySpec::roles();
        if let Ok(previous) = directory.manifest() {
            identities.extend(previous.identities);
        }
        identities.extend(extra.iter().cloned());
        let mut unique: Vec<IdentitySpec> = Vec::new();
        for spec in identities {
            spec.validate()?;
            if let Some(existing) = unique.iter_mut().find(|known| known.name == spec.name) {
                *existing = spec;
            } else {
                unique.push(spec);
            }
        }
        let manifest = Manifest {
            trust_domain: ca.trust_domain().as_str().to_owned(),
            identities: unique,
        };
        for spec in &manifest.identities {
            let svid = ca.mint(&manifest.spiffe_id(spec), ttl)?;
            make_private_dir(&directory.svid_dir(&spec.name))?;
            write_file(
                &directory.cert_path(&spec.name),
                svid.chain_pem.as_bytes(),
                0o644,
            )?;
            write_file(
                &directory.key_path(&spec.name),
                svid.key_pem.as_bytes(),
                0o600,
            )?;
            write_file(
                &directory.bundle_path(&spec.name),
                ca.cert_pem().as_bytes(),
                0o644,
            )?;
        }
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| DirectoryError::Manifest {
            path: directory.manifest_path(),
            reason: e.to_string(),
        })?;
        write_file(&directory.manifest_path(), &json, 0o644)?;
        Ok(directory)
    }

    /// The directory's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads `identities.json`.
    pub fn manifest(&self) -> Result<Manifest, DirectoryError> {
        let path = self.manifest_path();
        let bytes = fs::read(&path).map_err(|source| DirectoryError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| DirectoryError::Manifest {
            path,
            reason: e.to_string(),
        })
    }

    /// Loads the dev CA.
    pub fn load_ca(&self) -> Result<DevCa, DirectoryError> {
        let manifest = self.manifest()?;
        let cert = read_string(&self.ca_cert_path())?;
        let key = read_string(&self.ca_key_path())?;
        Ok(DevCa::from_pem(&manifest.trust_domain, &cert, &key)?)
    }

    /// `identities.json`.
    pub fn manifest_path(&self) -> PathBuf {
        self.root.join("identities.json")
    }

    /// The CA certificate (trust bundle).
    pub fn ca_cert_path(&self) -> PathBuf {
        self.root.join("ca").join("bundle.pem")
    }

    /// The CA key.
    pub fn ca_key_path(&self) -> PathBuf {
        self.root.join("ca").join("ca.key")
    }

    /// The directory of one identity's files.
    pub fn svid_dir(&self, name: &str) -> PathBuf {
        self.root.join("svid").join(name)
    }

    /// An identity's certificate file.
    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.svid_dir(name).join("cert.pem")
    }

    /// An identity's key file.
    pub fn key_path(&self, name: &str) -> PathBuf {
        self.svid_dir(name).join("key.pem")
    }

    /// An identity's bundle file.
    pub fn bundle_path(&self, name: &str) -> PathBuf {
        self.svid_dir(name).join("bundle.pem")
    }

    /// Where the Workload API socket of an identity lives.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.sockets_dir().join(format!("{name}.sock"))
    }

    /// The directory of Workload API sockets.
    pub fn sockets_dir(&self) -> PathBuf {
        self.root.join("sockets")
    }
}

pub(crate) fn make_private_dir(path: &Path) -> Result<(), DirectoryError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| DirectoryError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Writes via a temporary file and rename, so readers (the SVID file
/// watcher) never see half a file.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), DirectoryError> {
    let io = |source| DirectoryError::Io {
        path: path.to_owned(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temporary, path).map_err(io)
}

fn read_string(path: &Path) -> Result<String, DirectoryError> {
    fs::read_to_string(path).map_err(|source| DirectoryError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_specs_parse_and_validate() {
        assert_eq!(
            IdentitySpec::parse("/app/billing").expect("bare path"),
            IdentitySpec {
                name: "app-billing".to_owned(),
                path: "/app/billing".to_owned()
            }
        );
        assert_eq!(
            IdentitySpec::parse("nexus-2=/spike/nexus/2")
                .expect("named")
                .name,
            "nexus-2"
        );
        assert!(IdentitySpec::parse("Bad Name=/x").is_err());
        assert!(IdentitySpec::parse("x=relative").is_err());
        assert!(IdentitySpec::parse("../escape=/x").is_err());
    }
}
