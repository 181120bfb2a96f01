//! The thread pool every parallel region of the crate runs on, re-created after a fork.
//!
//! rayon's global pool is built once per process. A child forked after the pool started (Python
//! `multiprocessing` with fork, `datasets.map(num_proc=…)`, PyTorch DataLoader workers)
//! inherits the pool's bookkeeping but none of its threads, so its first parallel call would
//! wait forever for workers that do not exist. Here the pool belongs to a process id: a forked
//! child builds its own on first use. `RAYON_NUM_THREADS` sets its size, as for rayon's own.
//!
//! A call can ask for fewer (or more) threads than that: [`with_threads`] gives the calling
//! thread a pool of its own for the duration, [`Scope`] carries it onto helper threads, and
//! work already running on a rayon worker stays on that worker's pool.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// (process id, its pool). The lock is held only to read or replace the pair, never while work
/// runs, so a fork cannot catch it held by a busy thread for long.
static POOL: Mutex<Option<(u32, Arc<ThreadPool>)>> = Mutex::new(None);

thread_local! {
    /// The pool [`with_threads`] chose for this thread, if any.
    static SCOPED: RefCell<Option<Arc<ThreadPool>>> = const { RefCell::new(None) };
}

/// This thread's pool: the one [`with_threads`] chose, else the process's.
pub fn pool() -> Arc<ThreadPool> {
    if let Some(p) = SCOPED.with(|s| s.borrow().clone()) {
        return p;
    }
    let pid = std::process::id();
    let mut slot = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((owner, pool)) = slot.as_ref() {
        if *owner == pid {
            return pool.clone();
        }
    }
    let pool = Arc::new(
        ThreadPoolBuilder::new()
            .thread_name(|i| format!("arrow-quant-{i}"))
            .build()
            .expect("cannot start the worker threads"),
    );
    if let Some(inherited) = slot.replace((pid, pool.clone())) {
        // The parent's pool: its threads do not exist here, so it must not be dropped (that
        // would signal and wait on them). Leaked once per fork.
        std::mem::forget(inherited);
    }
    pool
}

/// Work below this (in values of a min/max quantize, about 0.2 ns each on one core) runs on the
/// calling thread. Handing a call to the pool and waiting for it wakes sleeping workers: about
/// 20 µs per call on the 2-core VM we measure on (a 4096-value quantize took 20 µs through the
/// pool and 1 µs on the calling thread), where one core encodes 2^17 values in about 29 µs.
pub const INLINE_WORK: usize = 1 << 17;

/// Whether work of this size should skip the pool: below [`INLINE_WORK`], or on a pool of one
/// thread (the hand-over is then all the pool adds).
pub fn runs_inline(work: usize) -> bool {
    work < INLINE_WORK || num_threads() == 1
}

/// Runs `f` on this thread's pool; parallel iterators inside it use that pool. Calls made on a
/// rayon worker run inline, on the worker's own pool (so a [`with_threads`] pool is kept).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    pool().install(f)
}

/// Runs `f` with every parallel region of the crate started from this thread (and from threads
/// that enter its [`Scope`]) on a pool of `n` threads; `n == 0` keeps the current pool.
pub fn with_threads<R>(n: usize, f: impl FnOnce() -> R) -> R {
    if n == 0 {
        return f();
    }
    let own = ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("arrow-quant-call-{i}"))
        .build()
        .expect("cannot start the worker threads");
    Scope(Some(Arc::new(own))).enter(f)
}

/// The calling thread's pool choice, to be entered on a helper thread it starts.
#[derive(Clone)]
pub struct Scope(Option<Arc<ThreadPool>>);

impl Scope {
    pub fn current() -> Self {
        Scope(SCOPED.with(|s| s.borrow().clone()))
    }

    /// Runs `f` with this choice in effect on the current thread, then restores the previous.
    pub fn enter<R>(self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Arc<ThreadPool>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                SCOPED.with(|s| *s.borrow_mut() = self.0.take());
            }
        }
        let _restore = Restore(SCOPED.with(|s| std::mem::replace(&mut *s.borrow_mut(), self.0)));
        f()
    }
}

/// Replaces this process's pool with one of `n` threads; `n == 0` goes back to the default
/// (`RAYON_NUM_THREADS` if set, else one per core). Calls already running finish on the pool
/// they started on; calls inside [`with_threads`] keep their own.
pub fn set_num_threads(n: usize) -> std::result::Result<(), String> {
    let pool = ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("arrow-quant-{i}"))
        .build()
        .map_err(|e| format!("cannot start {n} worker threads: {e}"))?;
    let mut slot = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((owner, inherited)) = slot.replace((std::process::id(), Arc::new(pool))) {
        if owner != std::process::id() {
            std::mem::forget(inherited); // a parent's pool: see `pool`
        }
    }
    Ok(())
}

/// How many threads the pool runs.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// The distinct worker threads a parallel region started from here runs on.
    fn workers_used() -> usize {
        let names: std::collections::BTreeSet<String> = install(|| {
            (0..256)
                .into_par_iter()
                .map(|_| {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    std::thread::current().name().unwrap_or("").to_string()
                })
                .collect()
        });
        names.len()
    }

    #[test]
    fn set_num_threads_replaces_the_process_pool() {
        // The only test that changes the process's pool (tests run in parallel).
        let default = num_threads();
        set_num_threads(1).unwrap();
        assert_eq!((num_threads(), workers_used()), (1, 1));
        set_num_threads(0).unwrap();
        assert_eq!(num_threads(), default);
    }

    #[test]
    fn with_threads_bounds_this_thread_and_its_scope() {
        assert_eq!(with_threads(1, num_threads), 1);
        assert_eq!(with_threads(1, workers_used), 1);
        assert_eq!(with_threads(3, num_threads), 3);
        // A helper thread entering the caller's scope uses the same pool.
        let inherited = with_threads(1, || {
            let scope = Scope::current();
            std::thread::spawn(move || scope.enter(|| (num_threads(), workers_used()))).join().unwrap()
        });
        assert_eq!(inherited, (1, 1));
        // Outside, the process's pool again.
        assert_eq!(num_threads(), pool().current_num_threads());
        assert!(SCOPED.with(|s| s.borrow().is_none()));
        assert_eq!(with_threads(0, num_threads), num_threads());
    }
}
