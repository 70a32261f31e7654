use std::path::PathBuf;
use std::time::Duration;

use super::{Identity, IdentityError, files, workload_api};
use crate::environment::Environment;
use crate::identity::SpiffeId;

/// How long start-up waits for the Workload API's first SVID by default.
pub const WORKLOAD_API_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// The environment variable naming the Workload API socket (SPIFFE's name).
pub const ENDPOINT_SOCKET_VARIABLE: &str = "SPIFFE_ENDPOINT_SOCKET";
/// The environment variable naming the one SVID to use when the Workload
/// API offers several.
pub const SPIFFE_ID_VARIABLE: &str = "SPIKE_SPIFFE_ID";
/// The environment variable naming the SVID certificate chain PEM file.
pub const CERT_FILE_VARIABLE: &str = "SPIKE_SVID_CERT_FILE";
/// The environment variable naming the SVID private key PEM file.
pub const KEY_FILE_VARIABLE: &str = "SPIKE_SVID_KEY_FILE";
/// The environment variable naming the trust bundle PEM file.
pub const BUNDLE_FILE_VARIABLE: &str = "SPIKE_SVID_BUNDLE_FILE";

/// The three PEM files of a file-based SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidFiles {
    /// Leaf certificate followed by any intermediates.
    pub cert: PathBuf,
    /// PKCS#8, SEC1 or PKCS#1 private key of the leaf.
    pub key: PathBuf,
    /// CA certificates of the SVID's own trust domain.
    pub bundle: PathBuf,
}

/// Where a process gets its SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvidSource {
    /// The SPIFFE Workload API at this endpoint (`unix:///path` or
    /// `tcp://ip:port`).
    WorkloadApi {
        /// The endpoint address.
        endpoint: String,
        /// The SVID to use when the Workload API offers several (the first
        /// if none is named).
        spiffe_id: Option<SpiffeId>,
    },
    /// PEM files, reloaded when they change.
    Files(SvidFiles),
}

impl SvidSource {
    /// Chooses the source from the environment: the three SVID file variables
    /// if any is set, otherwise `SPIFFE_ENDPOINT_SOCKET`.
    pub fn from_environment(env: &impl Environment) -> Result<Self, IdentityError> {
        Self::choose(
            env.non_blank(ENDPOINT_SOCKET_VARIABLE),
            env.non_blank(SPIFFE_ID_VARIABLE).as_deref(),
            env.non_blank(CERT_FILE_VARIABLE).map(PathBuf::from),
            env.non_blank(KEY_FILE_VARIABLE).map(PathBuf::from),
            env.non_blank(BUNDLE_FILE_VARIABLE).map(PathBuf::from),
        )
    }

    fn choose(
        endpoint: Option<String>,
        spiffe_id: Option<&str>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        bundle: Option<PathBuf>,
    ) -> Result<Self, IdentityError> {
        if cert.is_none() && key.is_none() && bundle.is_none() {
            let spiffe_id = spiffe_id
                .map(|text| {
                    SpiffeId::new(text.trim()).map_err(|error| IdentityError::InvalidSpiffeId {
                        text: text.to_owned(),
                        reason: error.to_string(),
                    })
                })
                .transpose()?;
            return match endpoint {
                Some(endpoint) => Ok(SvidSource::WorkloadApi {
                    endpoint,
                    spiffe_id,
                }),
                None => Err(IdentityError::NoSource),
            };
        }
        let missing = |missing| IdentityError::IncompleteFiles { missing };
        Ok(SvidSource::Files(SvidFiles {
            cert: cert.ok_or(missing(CERT_FILE_VARIABLE))?,
            key: key.ok_or(missing(KEY_FILE_VARIABLE))?,
            bundle: bundle.ok_or(missing(BUNDLE_FILE_VARIABLE))?,
        }))
    }

    /// Loads the first SVID (waiting at most `timeout` for the Workload API)
    /// and starts keeping it fresh in the background.
    pub async fn load(&self, timeout: Duration) -> Result<Identity, IdentityError> {
        match self {
            SvidSource::WorkloadApi {
                endpoint,
                spiffe_id,
            } => workload_api::connect(endpoint, spiffe_id.as_ref(), timeout).await,
            SvidSource::Files(paths) => files::watch(paths.clone()).await,
        }
    }
}

/// Command-line flags that choose an SVID source; every binary flattens them
/// into its own arguments.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct SvidArgs {
    /// SPIFFE Workload API endpoint, e.g. unix:///run/spire/agent.sock
    #[arg(long, env = ENDPOINT_SOCKET_VARIABLE, value_name = "ENDPOINT")]
    pub spiffe_endpoint_socket: Option<String>,
    /// The SPIFFE ID to use when the Workload API offers several SVIDs
    /// (the first one otherwise)
    #[arg(long, env = SPIFFE_ID_VARIABLE, value_name = "SPIFFE_ID")]
    pub spiffe_id: Option<String>,
    /// SVID certificate chain PEM file (instead of the Workload API)
    #[arg(long, env = CERT_FILE_VARIABLE, value_name = "PATH")]
    pub svid_cert: Option<PathBuf>,
    /// SVID private key PEM file
    #[arg(long, env = KEY_FILE_VARIABLE, value_name = "PATH")]
    pub svid_key: Option<PathBuf>,
    /// Trust bundle PEM file
    #[arg(long, env = BUNDLE_FILE_VARIABLE, value_name = "PATH")]
    pub svid_bundle: Option<PathBuf>,
    /// How long to wait for the Workload API's first SVID, in milliseconds;
    /// the process reports what the Workload API answers every 2 s while
    /// it waits, and exits with code 64 after this long
    #[arg(long, env = "SPIKE_WORKLOAD_API_TIMEOUT_MS", default_value_t = 10_000)]
    pub workload_api_timeout_ms: u64,
}

#[cfg(feature = "cli")]
impl SvidArgs {
    /// The source these flags select.
    pub fn source(&self) -> Result<SvidSource, IdentityError> {
        SvidSource::choose(
            self.spiffe_endpoint_socket
                .clone()
                .filter(|endpoint| !endpoint.trim().is_empty()),
            self.spiffe_id.as_deref().filter(|id| !id.trim().is_empty()),
            self.svid_cert.clone(),
            self.svid_key.clone(),
            self.svid_bundle.clone(),
        )
    }

    /// Loads the identity these flags select.
    pub async fn load(&self) -> Result<Identity, IdentityError> {
        self.source()?
            .load(Duration::from_millis(self.workload_api_timeout_ms))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_win_over_the_socket_and_must_come_together() {
        let env = [
            ("SPIFFE_ENDPOINT_SOCKET", "unix:///tmp/agent.sock"),
            ("SPIKE_SVID_CERT_FILE", "/c.pem"),
        ];
        let error = SvidSource::from_environment(&env).expect_err("key and bundle missing");
        assert!(error.to_string().contains("SPIKE_SVID_KEY_FILE"), "{error}");

        let env = [
            ("SPIFFE_ENDPOINT_SOCKET", "unix:///tmp/agent.sock"),
            ("SPIKE_SVID_CERT_FILE", "/c.pem"),
            ("SPIKE_SVID_KEY_FILE", "/k.pem"),
            ("SPIKE_SVID_BUNDLE_FILE", "/b.pem"),
        ];
        assert!(matches!(
            SvidSource::from_environment(&env),
            Ok(SvidSource::Files(_))
        ));
    }

    #[test]
    fn the_socket_alone_selects_the_workload_api_and_nothing_is_an_error() {
        let env = [("SPIFFE_ENDPOINT_SOCKET", " unix:///tmp/agent.sock ")];
        assert_eq!(
            SvidSource::from_environment(&env).expect("socket set"),
            SvidSource::WorkloadApi {
                endpoint: "unix:///tmp/agent.sock".to_owned(),
                spiffe_id: None,
            }
        );
        let env = [
            ("SPIFFE_ENDPOINT_SOCKET", "unix:///tmp/agent.sock"),
            (
                "SPIKE_SPIFFE_ID",
                "spiffe://spike.ist/spike/pilot/role/recover",
            ),
        ];
        assert!(matches!(
            SvidSource::from_environment(&env),
            Ok(SvidSource::WorkloadApi { spiffe_id: Some(id), .. })
                if id.path() == "/spike/pilot/role/recover"
        ));
        let env = [
            ("SPIFFE_ENDPOINT_SOCKET", "unix:///tmp/agent.sock"),
            ("SPIKE_SPIFFE_ID", "not-an-id"),
        ];
        assert!(matches!(
            SvidSource::from_environment(&env),
            Err(IdentityError::InvalidSpiffeId { .. })
        ));
        assert!(matches!(
            SvidSource::from_environment(&[]),
            Err(IdentityError::NoSource)
        ));
    }
}
