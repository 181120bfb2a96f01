//! The thread pool every parallel region of the crate runs on, re-created after a fork.
//!
//! rayon's global pool is built once per process. A child forked after the pool started (Python
//! `multiprocessing` with fork, `datasets.map(num_proc=…)`, PyTorch DataLoader workers)
//! inherits the pool's bookkeeping but none of its threads, so its first parallel call would
//! wait forever for workers that do not exist. Here the pool belongs to a process id: a forked
//! child builds its own on first use. `RAYON_NUM_THREADS` sets its size, as for rayon's own.

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// (process id, its pool). The lock is held only to read or replace the pair, never while work
/// runs, so a fork cannot catch it held by a busy thread for long.
static POOL: Mutex<Option<(u32, Arc<ThreadPool>)>> = Mutex::new(None);

/// This process's pool.
pub fn pool() -> Arc<ThreadPool> {
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

/// Runs `f` on this process's pool; parallel iterators inside it use that pool. Nested calls
/// (already on one of its workers) run inline.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// How many threads the pool runs.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}
