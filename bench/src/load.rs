//! The load loop: N clients issue operations back to back for a fixed time;
//! every latency is kept (4 bytes each, bounded by the run length) so the
//! percentiles are exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What each operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Writes only.
    Put,
    /// Linearizable reads only.
    Get,
    /// Reads served from the contacted node's state.
    GetStale,
    /// 90 % linearizable reads, 10 % writes.
    Mixed,
    /// Encryption of a 1 KiB plaintext under the store's own key (SPIKE's
    /// cipher, Vault's transit).
    Encrypt,
    /// Decryption of what an encryption of 1 KiB gave.
    Decrypt,
}

/// Bytes of plaintext each encrypt and decrypt works on.
pub const CIPHER_PLAINTEXT_SIZE: usize = 1024;

/// The two operations a store under test offers.
pub trait Store: Send + Sync + 'static {
    /// Writes `value` at key number `key`.
    fn put(&self, key: u64, value: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Reads key number `key`, linearizable or not.
    fn get(&self, key: u64, stale: bool) -> impl Future<Output = Result<(), String>> + Send;
    /// Whether the store has the operations `workload` needs (etcd has no
    /// encryption, Vault no stale reads); runs of those it lacks are
    /// skipped.
    fn offers(&self, workload: Workload) -> bool {
        !matches!(workload, Workload::Encrypt | Workload::Decrypt)
    }
    /// Encrypts `plaintext`; the ciphertext in the store's own form.
    fn encrypt(&self, plaintext: &[u8]) -> impl Future<Output = Result<Vec<u8>, String>> + Send {
        let _ = plaintext;
        async { Err("this store has no encryption".to_owned()) }
    }
    /// Decrypts what [`Store::encrypt`] gave.
    fn decrypt(&self, ciphertext: &[u8]) -> impl Future<Output = Result<(), String>> + Send {
        let _ = ciphertext;
        async { Err("this store has no encryption".to_owned()) }
    }
}

/// Shape of one run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LoadShape {
    /// The operation mix.
    pub workload: Workload,
    /// Concurrent clients.
    pub clients: usize,
    /// How long operations are issued (seconds in JSON).
    #[serde(
        rename = "duration_s",
        serialize_with = "seconds",
        deserialize_with = "from_seconds"
    )]
    pub duration: Duration,
    /// Distinct keys.
    pub keys: u64,
    /// Bytes per value.
    pub value_size: usize,
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

fn from_seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let seconds = f64::deserialize(deserializer)?;
    Duration::try_from_secs_f64(seconds).map_err(serde::de::Error::custom)
}

/// Figures of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Completed operations per second.
    pub ops_per_second: f64,
    /// Completed operations.
    pub operations: u64,
    /// Failed operations.
    pub errors: u64,
    /// First error seen, if any.
    pub first_error: Option<String>,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p90_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub max_ms: f64,
}

/// Resident memory of process `pid` in KiB, from /proc.
pub fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A value of `size` printable bytes (JSON-safe for Nexus and Vault, bytes
/// for etcd).
pub fn value_of(size: usize) -> String {
    "0123456789abcdef".chars().cycle().take(size).collect()
}

/// Writes every key once so reads find something.
pub async fn preload<S: Store>(store: &Arc<S>, shape: &LoadShape) -> Result<(), String> {
    preload_counted(store, shape, &Arc::new(AtomicU64::new(0))).await
}

/// [`preload`], adding each acknowledged write to `written` (for a
/// progress report while a large store grows).
pub async fn preload_counted<S: Store>(
    store: &Arc<S>,
    shape: &LoadShape,
    written: &Arc<AtomicU64>,
) -> Result<(), String> {
    let value = Arc::new(value_of(shape.value_size));
    let lanes = shape.clients.clamp(1, 64) as u64;
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let (store, value, keys) = (store.clone(), value.clone(), shape.keys);
        let written = written.clone();
        tasks.push(tokio::spawn(async move {
            let mut key = lane;
            while key < keys {
                store.put(key, &value).await?;
                written.fetch_add(1, Ordering::Relaxed);
                key += lanes;
            }
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Runs `shape` against `store` and measures it.
pub async fn run<S: Store>(store: &Arc<S>, shape: &LoadShape) -> Outcome {
    let value = Arc::new(value_of(shape.value_size));
    let began = Instant::now();
    let end = began + shape.duration;
    let mut tasks = Vec::new();
    for client in 0..shape.clients {
        let (store, value, shape) = (store.clone(), value.clone(), *shape);
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::with_capacity(4096);
            let mut errors = 0u64;
            let mut first_error = None;
            // Each client decrypts what one encryption of its own gave.
            let plaintext = value_of(CIPHER_PLAINTEXT_SIZE).into_bytes();
            let sealed = if shape.workload == Workload::Decrypt {
                match store.encrypt(&plaintext).await {
                    Ok(sealed) => sealed,
                    Err(error) => return (latencies_us, 1, Some(error)),
                }
            } else {
                Vec::new()
            };
            // A cheap per-client sequence spreads keys without a RNG.
            let mut state = (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while Instant::now() < end {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let key = state % shape.keys.max(1);
                let started = Instant::now();
                let result = match shape.workload {
                    Workload::Put => store.put(key, &value).await,
                    Workload::Mixed if state.is_multiple_of(10) => store.put(key, &value).await,
                    Workload::Get | Workload::Mixed => store.get(key, false).await,
                    Workload::GetStale => store.get(key, true).await,
                    Workload::Encrypt => store.encrypt(&plaintext).await.map(drop),
                    Workload::Decrypt => store.decrypt(&sealed).await,
                };
                let took = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                match result {
                    Ok(()) => latencies_us.push(took),
                    Err(error) => {
                        errors += 1;
                        first_error.get_or_insert(error);
                    }
                }
            }
            (latencies_us, errors, first_error)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        if let Ok((latencies, failed, error)) = task.await {
            all.extend(latencies);
            errors += failed;
            if first_error.is_none() {
                first_error = error;
            }
        }
    }
    let elapsed = began.elapsed().as_secs_f64();
    all.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let index = ((all.len() as f64 - 1.0) * p).round() as usize;
        f64::from(all[index]) / 1000.0
    };
    Outcome {
        ops_per_second: all.len() as f64 / elapsed,
        operations: all.len() as u64,
        errors,
        first_error,
        p50_ms: percentile(0.50),
        p90_ms: percentile(0.90),
        p99_ms: percentile(0.99),
        max_ms: percentile(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting {
        puts: AtomicU64,
        gets: AtomicU64,
    }

    impl Store for Counting {
        async fn put(&self, _key: u64, value: &str) -> Result<(), String> {
            assert_eq!(value.len(), 256);
            self.puts.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
            Ok(())
        }
        async fn get(&self, key: u64, _stale: bool) -> Result<(), String> {
            self.gets.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
            if key == 1 { Err("one".into()) } else { Ok(()) }
        }
    }

    #[tokio::test]
    async fn a_mixed_run_is_mostly_reads_and_counts_errors() {
        let store = Arc::new(Counting {
            puts: AtomicU64::new(0),
            gets: AtomicU64::new(0),
        });
        let shape = LoadShape {
            workload: Workload::Mixed,
            clients: 4,
            duration: Duration::from_millis(100),
            keys: 50,
            value_size: 256,
        };
        preload(&store, &shape).await.expect("preload");
        assert_eq!(store.puts.load(Ordering::Relaxed), 50);
        let outcome = run(&store, &shape).await;
        let puts = store.puts.load(Ordering::Relaxed) - 50;
        let gets = store.gets.load(Ordering::Relaxed);
        assert!(gets > 5 * puts, "gets {gets}, puts {puts}");
        assert_eq!(outcome.operations + outcome.errors, puts + gets);
        assert!(outcome.errors > 0 && outcome.first_error.as_deref() == Some("one"));
        assert!(outcome.p50_ms <= outcome.p99_ms && outcome.p99_ms <= outcome.max_ms);
        assert!(!store.offers(Workload::Encrypt) && !store.offers(Workload::Decrypt));
    }

    /// Encrypts by prefixing a marker; counts the calls.
    struct Sealing {
        encryptions: AtomicU64,
        decryptions: AtomicU64,
    }

    impl Store for Sealing {
        async fn put(&self, _key: u64, _value: &str) -> Result<(), String> {
            Err("no puts here".into())
        }
        async fn get(&self, _key: u64, _stale: bool) -> Result<(), String> {
            Err("no gets here".into())
        }
        fn offers(&self, _workload: Workload) -> bool {
            true
        }
        async fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, String> {
            assert_eq!(plaintext.len(), CIPHER_PLAINTEXT_SIZE);
            self.encryptions.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
            Ok([b"sealed:".as_slice(), plaintext].concat())
        }
        async fn decrypt(&self, ciphertext: &[u8]) -> Result<(), String> {
            self.decryptions.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
            match ciphertext.strip_prefix(b"sealed:") {
                Some(plaintext) if plaintext.len() == CIPHER_PLAINTEXT_SIZE => Ok(()),
                _ => Err("not what encrypt gave".into()),
            }
        }
    }

    #[tokio::test]
    async fn a_decrypt_run_opens_what_one_encryption_per_client_gave() {
        let store = Arc::new(Sealing {
            encryptions: AtomicU64::new(0),
            decryptions: AtomicU64::new(0),
        });
        let shape = LoadShape {
            workload: Workload::Decrypt,
            clients: 3,
            duration: Duration::from_millis(50),
            keys: 10,
            value_size: 256,
        };
        let outcome = run(&store, &shape).await;
        assert_eq!(store.encryptions.load(Ordering::Relaxed), 3);
        assert_eq!(outcome.errors, 0, "{:?}", outcome.first_error);
        assert_eq!(
            outcome.operations,
            store.decryptions.load(Ordering::Relaxed)
        );
        assert!(outcome.operations > 0);
    }
}
