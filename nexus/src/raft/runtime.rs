//! The async runtime Raft runs on: tokio, with randomness that a
//! simulation can seed.
//!
//! openraft draws its election timeouts from the runtime's RNG. In
//! production that is the operating system's entropy, as with plain tokio.
//! Inside [`seeded`] (the deterministic simulator wraps each replica in it)
//! every draw comes from a seed handed down the tree of spawned tasks, so a
//! simulation seed replays the same elections.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend};
use openraft_rt_tokio::TokioRuntime;
use rand::SeedableRng;
use rand::rngs::SmallRng;

tokio::task_local! {
    static SEED: Cell<u64>;
}

/// Runs `future` with Raft's randomness drawn from `seed`.
pub fn seeded<F: Future>(seed: u64, future: F) -> impl Future<Output = F::Output> {
    SEED.scope(Cell::new(seed), future)
}

/// SplitMix64: a bijective mixer, so parent and child seeds never collide.
fn mix(seed: u64, gamma: u64) -> u64 {
    let z = seed.wrapping_add(gamma);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The current task's seed, advanced; `None` outside [`seeded`].
fn next_seed() -> Option<u64> {
    SEED.try_with(|cell| {
        let seed = cell.get();
        cell.set(mix(seed, 0x6a09_e667_f3bc_c908));
        seed
    })
    .ok()
}

/// tokio, with a seedable RNG.
#[derive(Debug)]
pub struct NexusRuntime(TokioRuntime);

type Tokio = TokioRuntime;

impl AsyncRuntime for NexusRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;
    type Mpsc = <Tokio as AsyncRuntime>::Mpsc;
    type Watch = <Tokio as AsyncRuntime>::Watch;
    type Oneshot = <Tokio as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        match next_seed() {
            Some(seed) => Tokio::spawn(seeded(mix(seed, 0x9e37_79b9_7f4a_7c15), future)),
            None => Tokio::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        match next_seed() {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_rng(&mut rand::rng()),
        }
    }

    fn new(threads: usize) -> Self {
        Self(Tokio::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Tokio::spawn_blocking(f)
    }
}

#[cfg(test)]
mod tests {
    use rand::RngExt;

    use super::*;

    fn draws() -> Vec<u64> {
        (0..4)
            .map(|_| NexusRuntime::thread_rng().random())
            .collect()
    }

    #[tokio::test]
    async fn a_seed_replays_the_same_draws_and_another_seed_does_not() {
        let first = seeded(7, async { draws() }).await;
        let again = seeded(7, async { draws() }).await;
        let other = seeded(8, async { draws() }).await;
        assert_eq!(first, again);
        assert_ne!(first, other);
    }

    #[tokio::test]
    async fn spawned_tasks_inherit_a_seed_of_their_own() {
        let spawned = |seed| {
            seeded(seed, async {
                NexusRuntime::spawn(async { draws() }).await.expect("task")
            })
        };
        assert_eq!(spawned(3).await, spawned(3).await);
        assert_ne!(spawned(3).await, seeded(3, async { draws() }).await);
    }

    #[tokio::test]
    async fn outside_a_seed_draws_come_from_the_os() {
        assert_ne!(draws(), draws());
    }
}
