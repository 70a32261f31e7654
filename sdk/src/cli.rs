//! Start-up plumbing shared by the binaries (feature `cli`): logging and the
//! rule that configuration problems end the process with exit code 64
//! before any port is bound.

use std::fmt::Display;
use std::process::ExitCode;

pub use crate::svid::SvidArgs;

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
