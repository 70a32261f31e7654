//! `spike cipher`: encryption as a service, in stream or JSON mode.

use std::io::{Read, Write};
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Subcommand;
use spike_sdk::api::{DecryptRequest, EncryptRequest, FORMAT_VERSION, StreamFrame};
use spike_sdk::client::NexusClient;
use zeroize::Zeroizing;

use crate::nexus::CliError;

/// Largest input read from a file or stdin (the server's limit is lower).
const INPUT_SIZE_MAX_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum CipherCommand {
    /// Encrypt a file or stdin (stream mode), or --plaintext (JSON mode).
    Encrypt {
        /// Input file (default: stdin).
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        /// Output file (default: stdout).
        #[arg(short = 'o', long)]
        out: Option<PathBuf>,
        /// Base64 plaintext for JSON mode.
        #[arg(long)]
        plaintext: Option<String>,
        /// Algorithm hint for JSON mode (ignored by the server).
        #[arg(long)]
        algorithm: Option<String>,
    },
    /// Decrypt a file or stdin (stream mode), or --version/--nonce/--ciphertext (JSON mode).
    Decrypt {
        /// Input file (default: stdin).
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        /// Output file (default: stdout).
        #[arg(short = 'o', long)]
        out: Option<PathBuf>,
        /// Version byte (0-255) for JSON mode.
        #[arg(long)]
        version: Option<u8>,
        /// Nonce (base64) for JSON mode.
        #[arg(long)]
        nonce: Option<String>,
        /// Ciphertext (base64) for JSON mode.
        #[arg(long)]
        ciphertext: Option<String>,
        /// Algorithm hint for JSON mode (ignored by the server).
        #[arg(long)]
        algorithm: Option<String>,
    },
}

fn read_input(file: Option<&PathBuf>) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let mut bytes = Zeroizing::new(Vec::new());
    let outcome = match file {
        Some(path) => std::fs::File::open(path)
            .map_err(|e| {
                CliError::Invalid(format!(
                    "Cannot access input file: {} ({e})",
                    path.display()
                ))
            })?
            .take(INPUT_SIZE_MAX_BYTES)
            .read_to_end(&mut bytes),
        None => std::io::stdin()
            .take(INPUT_SIZE_MAX_BYTES)
            .read_to_end(&mut bytes),
    };
    outcome.map_err(|e| CliError::Invalid(format!("cannot read input: {e}")))?;
    Ok(bytes)
}

fn write_output(out: Option<&PathBuf>, bytes: &[u8]) -> Result<(), CliError> {
    let written = match out {
        Some(path) => std::fs::write(path, bytes),
        None => std::io::stdout()
            .write_all(bytes)
            .and_then(|()| std::io::stdout().flush()),
    };
    written.map_err(|e| CliError::Invalid(format!("Failed to write output: {e}")))
}

fn base64_flag(text: &str, flag: &str) -> Result<Vec<u8>, CliError> {
    STANDARD
        .decode(text)
        .map_err(|_| CliError::Invalid(format!("Invalid {flag} base64.")))
}

/// Runs a cipher command; the output is written here, nothing to print.
pub async fn run(nexus: &NexusClient, command: CipherCommand) -> Result<String, CliError> {
    match command {
        CipherCommand::Encrypt {
            file,
            out,
            plaintext,
            algorithm,
        } => {
            let sealed = match plaintext {
                Some(plaintext) => {
                    let request = EncryptRequest {
                        plaintext: Zeroizing::new(base64_flag(&plaintext, "--plaintext")?),
                        algorithm: algorithm.unwrap_or_default(),
                    };
                    let answer = nexus.encrypt_json(&request).await?;
                    // SPIKE's CLI prints the ciphertext alone in JSON mode;
                    // we print the whole stream frame so it can be decrypted.
                    let nonce = answer.nonce.as_slice().try_into().map_err(|_| {
                        CliError::Invalid("the answer's nonce is not 12 bytes".to_owned())
                    })?;
                    StreamFrame {
                        version: answer.version,
                        nonce,
                        ciphertext: answer.ciphertext,
                    }
                    .to_bytes()
                }
                None => nexus.encrypt(&read_input(file.as_ref())?).await?,
            };
            write_output(out.as_ref(), &sealed)?;
            Ok(String::new())
        }
        CipherCommand::Decrypt {
            file,
            out,
            version,
            nonce,
            ciphertext,
            algorithm,
        } => {
            let plaintext = if version.is_some() || nonce.is_some() || ciphertext.is_some() {
                let request = DecryptRequest {
                    version: version.unwrap_or(FORMAT_VERSION),
                    nonce: base64_flag(&nonce.unwrap_or_default(), "--nonce")?,
                    ciphertext: base64_flag(&ciphertext.unwrap_or_default(), "--ciphertext")?,
                    algorithm: algorithm.unwrap_or_default(),
                };
                nexus.decrypt_json(&request).await?.plaintext
            } else {
                nexus.decrypt(&read_input(file.as_ref())?).await?
            };
            write_output(out.as_ref(), &plaintext)?;
            Ok(String::new())
        }
    }
}
