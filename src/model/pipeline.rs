//! The converter's three stages, each on its own thread, joined by bounded queues:
//!
//! ```text
//! read-ahead ──(inputs in flight ≤ read_ahead bytes)──▶ encode ──(≤ 2 outputs)──▶ write
//!  maps the next tensors     every core (rayon): small tensors     the calling thread, in
//!  and brings their pages    batched, large ones split by the     model order; progress is
//!  in (from disk if cold)    kernels                              reported from here
//! ```
//!
//! Everything flows in model order, so the first error met is the error of the first tensor
//! that fails, as in a plain loop; an error (or a progress report that fails: a Python callback
//! raising, Ctrl-C) stops all three stages and nothing is written after it. Memory stays
//! bounded: a tensor counts against the read-ahead budget (by its input bytes) from the moment
//! it is loaded until it is written, so inputs and outputs in flight together stay within about
//! twice the budget; a tensor larger than the budget still goes through, alone (its input and
//! its output: about twice the largest tensor).
//!
//! [`run`] with `Limits::sequential()` runs the same three steps one tensor at a time on the
//! calling thread: the reference the pipelined run is tested against, byte for byte.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::error::Result;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Input bytes of the tensors between loading and writing, at most (0: no pipeline at all).
    pub read_ahead: u64,
    /// Consecutive tensors smaller than this many bytes together are encoded side by side.
    pub batch: u64,
}

impl Limits {
    /// One tensor at a time on the calling thread.
    pub const fn sequential() -> Self {
        Self { read_ahead: 0, batch: 0 }
    }
}

impl Default for Limits {
    /// 256 MiB read ahead: a few large tensors, enough to keep a disk busy while they are
    /// encoded; batches of 64 MiB: enough small tensors to give every core work.
    fn default() -> Self {
        Self { read_ahead: 256 << 20, batch: 64 << 20 }
    }
}

/// How long each stage was busy: the one closest to the wall time bounds the rate.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    pub load: Duration,
    /// The encoder's batches, each using every core.
    pub encode: Duration,
    pub write: Duration,
    pub wall: Duration,
}

/// Bytes of input in flight between the read-ahead and the encoder.
struct Budget {
    limit: u64,
    state: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Self { limit, state: Mutex::new((0, false)), changed: Condvar::new() }
    }

    /// Waits until `n` more bytes fit (or nothing is in flight); false once stopped.
    fn acquire(&self, n: u64) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !s.1 && s.0 > 0 && s.0 + n > self.limit {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.1 {
            return false;
        }
        s.0 += n;
        true
    }

    fn release(&self, n: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 -= n;
        self.changed.notify_all();
    }

    fn stop(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.changed.notify_all();
    }
}

/// Stops the read-ahead however the writer leaves (done, error or panic), so that no stage
/// waits for one that is gone.
struct StopOnDrop<'a>(&'a Budget);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Runs `load`, `encode` and `write` over tensors `0..sizes.len()` (`sizes`: each one's input
/// bytes), `write` in order on the calling thread.
pub fn run<L: Send, E: Send>(
    sizes: &[u64],
    limits: Limits,
    load: impl Fn(usize) -> Result<L> + Sync,
    encode: impl Fn(usize, L) -> Result<E> + Sync,
    mut write: impl FnMut(usize, E) -> Result<()>,
) -> Result<Timings> {
    let started = Instant::now();
    let mut t = Timings::default();
    if limits.read_ahead == 0 {
        for i in 0..sizes.len() {
            let loaded = timed(&mut t.load, || load(i))?;
            let encoded = timed(&mut t.encode, || encode(i, loaded))?;
            timed(&mut t.write, || write(i, encoded))?;
        }
        t.wall = started.elapsed();
        return Ok(t);
    }
    let budget = Budget::new(limits.read_ahead);
    let (loaded_tx, loaded_rx) = mpsc::channel::<(usize, Result<L>)>();
    let (encoded_tx, encoded_rx) = mpsc::sync_channel::<(usize, Result<E>)>(2);
    std::thread::scope(|s| {
        let (budget, load, encode) = (&budget, &load, &encode);
        let _stop = StopOnDrop(budget);
        // Owned here, so that leaving early drops it before the scope joins the encoder,
        // whose next send then fails instead of waiting for room forever.
        let encoded_rx = encoded_rx;
        // The helper threads use the caller's thread-count choice (threads::with_threads).
        let scope = crate::threads::Scope::current();
        let reader = s.spawn({
            let scope = scope.clone();
            move || scope.enter(|| read_ahead(sizes, budget, load, loaded_tx))
        });
        let encoder = s.spawn(move || scope.enter(|| encoder(sizes, limits.batch, budget, encode, loaded_rx, encoded_tx)));
        for (i, encoded) in encoded_rx.iter() {
            let encoded = encoded?;
            timed(&mut t.write, || write(i, encoded))?;
            budget.release(sizes[i]);
        }
        // A stage that panicked ends its queue early; its panic goes on to the caller.
        t.load = reader.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        t.encode = encoder.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        t.wall = started.elapsed();
        Ok(t)
    })
}

fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    *total += t.elapsed();
    r
}

fn read_ahead<L>(sizes: &[u64], budget: &Budget, load: &(impl Fn(usize) -> Result<L> + Sync), out: mpsc::Sender<(usize, Result<L>)>) -> Duration {
    let mut busy = Duration::ZERO;
    for (i, &n) in sizes.iter().enumerate() {
        if !budget.acquire(n) {
            break;
        }
        let loaded = timed(&mut busy, || load(i));
        let failed = loaded.is_err();
        if out.send((i, loaded)).is_err() || failed {
            break;
        }
    }
    busy
}

fn encoder<L: Send, E: Send>(
    sizes: &[u64],
    batch_bytes: u64,
    budget: &Budget,
    encode: &(impl Fn(usize, L) -> Result<E> + Sync),
    loaded: Receiver<(usize, Result<L>)>,
    out: SyncSender<(usize, Result<E>)>,
) -> Duration {
    let mut busy = Duration::ZERO;
    while let Ok(first) = loaded.recv() {
        // Small tensors side by side: what is already loaded, up to `batch_bytes`.
        let mut bytes = sizes[first.0];
        let mut batch = vec![first];
        while bytes < batch_bytes && batch.last().is_some_and(|(_, l)| l.is_ok()) {
            match loaded.try_recv() {
                Ok(next) => {
                    bytes += sizes[next.0];
                    batch.push(next);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let results: Vec<(usize, Result<E>)> = timed(&mut busy, || {
            crate::threads::install(|| {
                batch
                    .into_par_iter()
                    .map(|(i, l)| (i, l.and_then(|l| encode(i, l))))
                    .collect()
            })
        });
        for (i, r) in results {
            let failed = r.is_err();
            if out.send((i, r)).is_err() || failed {
                budget.stop();
                return busy;
            }
        }
    }
    busy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::QuantError;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn limits() -> [Limits; 3] {
        [Limits::sequential(), Limits { read_ahead: 10, batch: 0 }, Limits { read_ahead: 1000, batch: 50 }]
    }

    #[test]
    fn writes_everything_in_order() {
        let sizes: Vec<u64> = (0..200).map(|i| (i * 7 % 13) as u64).collect();
        for l in limits() {
            let mut seen = Vec::new();
            run(&sizes, l, |i| Ok(i * 2), |i, x| Ok((i, x + 1)), |i, e| {
                seen.push((i, e));
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, (0..200).map(|i| (i, (i, i * 2 + 1))).collect::<Vec<_>>(), "{l:?}");
        }
    }

    /// The first failing tensor's error, from whichever stage, and nothing written after it.
    #[test]
    fn first_error_wins_and_stops() {
        let sizes = vec![5u64; 100];
        for l in limits() {
            for (bad_load, bad_encode) in [(Some(40), Some(60)), (Some(60), Some(40)), (None, Some(3)), (Some(0), None)] {
                let loads = AtomicUsize::new(0);
                let mut written = Vec::new();
                let r = run(
                    &sizes,
                    l,
                    |i| {
                        loads.fetch_add(1, Ordering::Relaxed);
                        if Some(i) == bad_load { Err(QuantError::value(format!("load {i}"))) } else { Ok(i) }
                    },
                    |i, x| if Some(i) == bad_encode { Err(QuantError::value(format!("encode {i}"))) } else { Ok(x) },
                    |i, _| {
                        written.push(i);
                        Ok(())
                    },
                );
                let first = bad_load.into_iter().chain(bad_encode).min().unwrap();
                assert!(r.unwrap_err().to_string().ends_with(&format!(" {first}")), "{l:?}");
                assert_eq!(written, (0..first).collect::<Vec<_>>());
                assert!(loads.load(Ordering::Relaxed) <= 100);
            }
        }
    }

    /// A writer that fails (a progress callback raising) stops the other stages.
    #[test]
    fn writer_error_stops_reading() {
        let loads = AtomicUsize::new(0);
        let r = run(
            &vec![1u64; 10_000],
            Limits { read_ahead: 4, batch: 0 },
            |i| {
                loads.fetch_add(1, Ordering::Relaxed);
                Ok(i)
            },
            |_, x| Ok(x),
            |i, _| if i == 5 { Err(QuantError::value("stop")) } else { Ok(()) },
        );
        assert!(r.is_err());
        // 6 written or in the writer's hands, 2 queued, one batch in the encoder, 4 read ahead
        assert!(loads.load(Ordering::Relaxed) < 30, "{}", loads.load(Ordering::Relaxed));
    }

    /// Tensors between loading and writing stay within the budget, except one tensor larger
    /// than it, alone.
    #[test]
    fn read_ahead_stays_within_budget() {
        let in_flight = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let sizes: Vec<u64> = (0..300).map(|i| if i % 50 == 7 { 500 } else { (i % 9 + 1) as u64 }).collect();
        run(
            &sizes,
            Limits { read_ahead: 100, batch: 30 },
            |i| {
                let now = in_flight.fetch_add(sizes[i] as usize, Ordering::SeqCst) + sizes[i] as usize;
                peak.fetch_max(now, Ordering::SeqCst);
                Ok(i)
            },
            |_, x| Ok(x),
            |i, _| {
                in_flight.fetch_sub(sizes[i] as usize, Ordering::SeqCst);
                Ok(())
            },
        )
        .unwrap();
        assert!(peak.load(Ordering::SeqCst) <= 500, "{}", peak.load(Ordering::SeqCst));
    }
}
