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

    /// Reports the error as one line on stderr (a JSON event when the logs
    /// are JSON, so a log shipper never meets a line it cannot parse) and
    /// returns its exit code.
    fn exit(&self, program: &str, log_format: LogFormat) -> ExitCode {
        let (message, code) = match self {
            Self::Config(message) => (message, ExitCode::from(crate::EXIT_CONFIG as u8)),
            Self::Failed(message) => (message, ExitCode::FAILURE),
        };
        match log_format {
            LogFormat::Text => eprintln!("{program}: {message}"),
            LogFormat::Json => tracing::error!("{program}: {message}"),
        }
        code
    }
}

/// Runs a server process: hardens it (locking memory as `lock_memory`
/// says), sets up logging in `log_format`, the runtime, runs `serve`, and
/// turns its outcome into an exit code.
pub fn run_server<F, Fut>(
    program: &str,
    lock_memory: MemoryLock,
    log_format: LogFormat,
    serve: F,
) -> ExitCode
where
    F: FnOnce(Hardening) -> Fut,
    Fut: Future<Output = Result<(), StartupError>>,
{
    let hardening = harden_process(lock_memory);
    init_logging(log_format);
    if lock_memory == MemoryLock::Required && !hardening.memory_locked {
        return StartupError::config(
            "--lock-memory=required: mlockall was refused (raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK)",
        )
        .exit(program, log_format);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return StartupError::failed(error).exit(program, log_format),
    };
    match runtime.block_on(serve(hardening)) {
        Ok(()) => {
            tracing::info!("{program} stopped");
            ExitCode::SUCCESS
        }
        Err(error) => error.exit(program, log_format),
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

/// The settings a server reads from the environment alone, for the end of
/// its `--help` (which lists every flag's variable itself): with it,
/// `--help` names every setting, so deployment files can be checked
/// against it.
pub const ENVIRONMENT_HELP: &str = "\
Read from the environment only:
  SPIKE_SYSTEM_LOG_LEVEL          log filter: trace, debug, info (default), warn, error, or per target (spike_nexus=debug,warn)
  NO_COLOR                        set and not empty: no colour in text logs even on a terminal
  SPIKE_TRUST_ROOT                trust domains every role is accepted from (comma-separated; default spike.ist)
  SPIKE_TRUST_ROOT_NEXUS          trust domains of Nexus replicas (default: SPIKE_TRUST_ROOT)
  SPIKE_TRUST_ROOT_KEEPER         trust domains of keepers
  SPIKE_TRUST_ROOT_PILOT          trust domains of the Pilot roles (superuser, recover, restore)
  SPIKE_TRUST_ROOT_BOOTSTRAP      trust domains of the bootstrap role
  SPIKE_TRUST_ROOT_LITE_WORKLOAD  trust domains of lite workloads";

/// The variable that sets the log format (flag `--log-format`).
pub const LOG_FORMAT_VARIABLE: &str = "SPIKE_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured only on a terminal (never under
    /// NO_COLOR), so files, pipes and the journal get plain text.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, message, target and
    /// the event's fields), for the journal and log shippers.
    Json,
}

/// The logging flags every server flattens into its own.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LogArgs {
    /// Log line format: text (coloured only on a terminal and without
    /// NO_COLOR) or json (one object per line)
    #[arg(long, env = LOG_FORMAT_VARIABLE, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Logs to stderr in `format`, filtered by `SPIKE_SYSTEM_LOG_LEVEL`
/// (default `info`). SPIKE's upper-case level names are accepted.
pub fn init_logging(format: LogFormat) {
    let filter = std::env::var(LOG_LEVEL_VARIABLE)
        .map(|level| level.to_lowercase())
        .unwrap_or_else(|_| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            use std::io::IsTerminal;
            let colour = colour_wanted(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            builder.with_ansi(colour).init();
        }
        // Flattened: `message` and the fields sit beside `level`, where
        // journald's and Loki's JSON parsers look for them.
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
}

/// Whether text logs are coloured: only on a terminal, and never when
/// `NO_COLOR` is set to something non-empty (<https://no-color.org>).
fn colour_wanted(stream_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stream_is_terminal && no_color.is_none_or(|value| value.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_and_never_under_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
        assert!(!colour_wanted(false, Some(OsStr::new(""))));
    }
}
