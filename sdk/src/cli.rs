//! Start-up plumbing shared by the binaries (feature `cli`): hardening,
//! logging, the runtime, loading the SVID of the process's role, binding the
//! mTLS listener, and the rule that configuration problems end the process
//! with exit code 64 before any port is bound.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;

use crate::environment::ProcessEnvironment;
use crate::hardening::{Hardening, MemoryLock, harden_process, memory_lock_hazard};
use crate::identity::{Role, TrustRoots};
use crate::svid::Identity;
pub use crate::svid::SvidArgs;
use crate::tls::{ConnectionLimits, TlsListener};

/// Why a server did not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration or identity cannot work: exit code 64, nothing bound.
    #[error("{0}")]
    Config(String),
    /// The process started but failed: exit code 1.
    #[error("{0}")]
    Failed(String),
}

impl StartupError {
    /// A configuration error.
    pub fn config(error: impl Display) -> Self {
        Self::Config(error.to_string())
    }

    /// A run-time failure.
    pub fn failed(error: impl Display) -> Self {
        Self::Failed(error.to_string())
    }

    fn exit(&self, program: &str) -> ExitCode {
        match self {
            Self::Config(message) => config_error(program, message),
            Self::Failed(message) => runtime_error(program, message),
        }
    }
}

/// Runs a server process: hardens it (locking memory as `lock_memory`
/// says), sets up logging and the runtime, runs `serve`, and turns its
/// outcome into an exit code.
pub fn run_server<F, Fut>(program: &str, lock_memory: MemoryLock, serve: F) -> ExitCode
where
    F: FnOnce(Hardening) -> Fut,
    Fut: Future<Output = Result<(), StartupError>>,
{
    let hardening = harden_process(lock_memory);
    if lock_memory == MemoryLock::Required && !hardening.memory_locked {
        return config_error(
            program,
            "--lock-memory=required: mlockall was refused (raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK)",
        );
    }
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return runtime_error(program, error),
    };
    match runtime.block_on(serve(hardening)) {
        Ok(()) => {
            tracing::info!("{program} stopped");
            ExitCode::SUCCESS
        }
        Err(error) => error.exit(program),
    }
}

/// Says that keys may be swapped out because memory could not be locked by
/// default. Servers call it once they listen, so a configuration error
/// stays the one line on stderr.
pub fn warn_if_unlocked(hardening: Hardening) {
    if hardening.unlocked_by_default {
        let reason = memory_lock_hazard().unwrap_or_else(|| "mlockall was refused".to_owned());
        tracing::warn!(
            %reason,
            "memory is not locked: keys and shares may be swapped to disk \
             (--lock-memory=off silences this, --lock-memory=required makes it fatal)"
        );
    }
}

/// Reads the trust roots, loads the SVID and checks it carries `role`.
pub async fn load_role_identity(
    svid: &SvidArgs,
    role: Role,
) -> Result<(TrustRoots, Identity), StartupError> {
    let trust_roots =
        TrustRoots::from_environment(&ProcessEnvironment).map_err(StartupError::config)?;
    let identity = svid.load().await.map_err(StartupError::config)?;
    identity
        .require_role(&trust_roots, role)
        .map_err(StartupError::config)?;
    Ok((trust_roots, identity))
}

/// Binds `address` and accepts mTLS connections with `config` (a server
/// config of `identity`) that live at most `max_age`, under the default
/// [`ConnectionLimits`].
pub async fn listen(
    address: SocketAddr,
    config: ServerConfig,
    identity: &Identity,
    max_age: Duration,
) -> Result<TlsListener, StartupError> {
    listen_limited(
        address,
        config,
        identity,
        max_age,
        ConnectionLimits::DEFAULT,
    )
    .await
}

/// Like [`listen`], under `limits`.
pub async fn listen_limited(
    address: SocketAddr,
    config: ServerConfig,
    identity: &Identity,
    max_age: Duration,
    limits: ConnectionLimits,
) -> Result<TlsListener, StartupError> {
    let tcp = crate::net::bind(address)
        .await
        .map_err(|error| StartupError::failed(format!("cannot listen on {address}: {error}")))?;
    TlsListener::with_limits(tcp, Arc::new(config), identity.clone(), max_age, limits)
        .map_err(StartupError::failed)
}

/// The variable that sets the log filter (SPIKE's name), e.g. `info`,
/// `debug`, `spike_keeper=debug,warn`.
pub const LOG_LEVEL_VARIABLE: &str = "SPIKE_SYSTEM_LOG_LEVEL";

/// Logs to stderr, filtered by `SPIKE_SYSTEM_LOG_LEVEL` (default `info`).
/// SPIKE's upper-case level names are accepted.
pub fn init_logging() {
    let filter = std::env::var(LOG_LEVEL_VARIABLE)
        .map(|level| level.to_lowercase())
        .unwrap_or_else(|_| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Prints `program: error` as one line on stderr and returns exit code 64
/// (configuration error).
pub fn config_error(program: &str, error: impl Display) -> ExitCode {
    eprintln!("{program}: {error}");
    ExitCode::from(crate::EXIT_CONFIG as u8)
}

/// Prints `program: error` as one line on stderr and returns exit code 1
/// (the process started but failed).
pub fn runtime_error(program: &str, error: impl Display) -> ExitCode {
    eprintln!("{program}: {error}");
    ExitCode::FAILURE
}

/// Resolves on SIGTERM or SIGINT: the start of a graceful shutdown.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the process still stops on the default action.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
