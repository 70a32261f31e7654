//! The process's monotonic clock, owned by the simulation.
//!
//! Some code under test reads `std::time::Instant` directly rather than
//! tokio's clock: h2, for one, forgets a reset stream after one second of
//! it, and answers later frames for that stream with a reset, so how fast
//! the simulator happened to run would leak into the run. The simulator
//! therefore defines `clock_gettime` itself (the executable's definition
//! wins over libc's for every call from Rust code): while a run is under
//! way, `CLOCK_MONOTONIC` and its variants read the simulated time; other
//! clocks, and every call between runs, go to the kernel.
//!
//! It also measures the driver's children's CPU time ([`children_cpu`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Simulated monotonic nanoseconds; 0 means "not simulating".
static NOW_NS: AtomicU64 = AtomicU64::new(0);
/// Where the current run's time starts.
static BASE_NS: AtomicU64 = AtomicU64::new(0);
/// The last simulated reading of the previous run.
static LAST_NS: AtomicU64 = AtomicU64::new(0);

/// Starts a run's clock a second beyond both the real clock and the last
/// run's, so no run sees it go back.
pub fn start_run() {
    let base = LAST_NS.load(Ordering::Relaxed).max(real_monotonic_ns()) + 1_000_000_000;
    BASE_NS.store(base, Ordering::Relaxed);
    NOW_NS.store(base, Ordering::Relaxed);
}

/// Hands the clock back to the kernel between runs.
pub fn end_run() {
    LAST_NS.store(NOW_NS.swap(0, Ordering::Relaxed), Ordering::Relaxed);
}

/// The kernel's monotonic clock, also while a run has its own: how long a
/// seed's phases take in wall time.
pub fn real_now() -> Duration {
    Duration::from_nanos(real_monotonic_ns())
}

fn real_monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a writable timespec on our stack.
    #[allow(unsafe_code)]
    let done = unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut now) };
    if done != 0 {
        return 0;
    }
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// Sets the clock to `elapsed` into the current run.
pub fn set_elapsed(elapsed: Duration) {
    let elapsed = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    NOW_NS.store(BASE_NS.load(Ordering::Relaxed) + elapsed, Ordering::Relaxed);
}

fn is_monotonic(clock: libc::clockid_t) -> bool {
    matches!(
        clock,
        libc::CLOCK_MONOTONIC
            | libc::CLOCK_MONOTONIC_RAW
            | libc::CLOCK_MONOTONIC_COARSE
            | libc::CLOCK_BOOTTIME
    )
}

/// `clock_gettime(2)` as the simulation sees it.
///
/// # Safety
///
/// As for libc's: `tp` points to a writable `timespec`.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn clock_gettime(
    clock: libc::clockid_t,
    tp: *mut libc::timespec,
) -> libc::c_int {
    let now = NOW_NS.load(Ordering::Relaxed);
    if now != 0 && is_monotonic(clock) && !tp.is_null() {
        let seconds = (now / 1_000_000_000) as libc::time_t;
        let nanos = (now % 1_000_000_000) as libc::c_long;
        // SAFETY: the caller passes a writable timespec.
        unsafe {
            (*tp).tv_sec = seconds;
            (*tp).tv_nsec = nanos;
        }
        return 0;
    }
    // SAFETY: the kernel's clock_gettime with the caller's arguments.
    unsafe { libc::syscall(libc::SYS_clock_gettime, clock, tp) as libc::c_int }
}

/// CPU time (user and system) of every child process waited for so far:
/// the driver's measure of what its seeds cost, whatever else the machine
/// runs.
pub fn children_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    #[allow(unsafe_code)]
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a writable rusage on our stack.
    #[allow(unsafe_code)]
    let done = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    if done != 0 {
        return Duration::ZERO;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_reads_simulated_time_and_never_goes_back() {
        start_run();
        let first = std::time::Instant::now();
        set_elapsed(Duration::from_secs(5));
        let later = std::time::Instant::now();
        assert_eq!(later - first, Duration::from_secs(5));
        end_run();
        start_run();
        assert!(std::time::Instant::now() > later);
        end_run();
    }
}
