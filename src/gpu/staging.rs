//! Buffers and the submit/wait/read-back cycle shared by both directions.
//!
//! Memory is bounded: each direction owns a few fixed sets of buffers (sized by [`Caps`]), used
//! in turn, so chunk k+1 is uploaded and queued while chunk k runs, and chunk k is read back
//! (mapped and copied straight into the jobs' output slices) while chunk k+1 runs. Every pass
//! uploads through persistent mapped buffers ([`Upload`]) filled by several threads.

use std::sync::mpsc;
use std::time::Instant;

use crate::error::{QuantError, Result};

use super::context::GpuContext;
use super::plan::Caps;

pub fn caps(ctx: &GpuContext) -> Caps {
    let binding = ctx.limits.max_storage_buffer_binding_size.min(ctx.limits.max_buffer_size);
    // Elements per chunk (`chunk_elems`): 4 Mi (16 MiB of f32). On an H200 machine 64 MiB
    // chunks moved more per second on calls of 256 MiB and up (upload 28 against 20 GB/s, the
    // whole path 14 against 11.6) but less on smaller ones (a 16 MiB call 2.9 against 11 GB/s,
    // 64 MiB 7 against 15), and ran the lsq kernel at half speed; `CHUNK_MIB_ENV` picks
    // another size for a hardware adapter. 16 MiB is also the most lavapipe runs exactly: it
    // stops every loop of an invocation after 65,535 iterations in all, and a one-group chunk
    // of 4 Mi elements takes about 23,000 per invocation (see `shaders/quantize.wgsl`).
    let elems = (binding / 4).min(chunk_elems(ctx.is_software()) as u64) as usize;
    let groups = (binding / super::plan::PARAMS_BYTES).min(elems as u64 / 4) as usize;
    let segs = 4096usize.min((binding / 48) as usize);
    let words = (elems / 4 + segs).min((binding / 4) as usize);
    Caps { elems, groups, words, segs }
}

/// Set to a number of MiB of f32 input per GPU chunk (1 to 1024; default [`CHUNK_MIB`]) on a
/// hardware adapter: larger chunks pay off on very large calls (see `caps`). Software adapters
/// always take the default (the llvmpipe loop limit).
pub const CHUNK_MIB_ENV: &str = "ARROW_QUANT_GPU_CHUNK_MIB";

/// MiB of f32 input per chunk unless [`CHUNK_MIB_ENV`] says otherwise.
const CHUNK_MIB: usize = 16;

/// Elements per chunk: MiB × 2^18 f32 values.
fn chunk_elems(software: bool) -> usize {
    let asked = std::env::var(CHUNK_MIB_ENV).ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|&m| (1..=1024).contains(&m));
    let mib = if software { CHUNK_MIB } else { asked.unwrap_or(CHUNK_MIB) };
    mib << 18
}

pub fn buffer(ctx: &GpuContext, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size: size.max(4), usage, mapped_at_creation: false })
}

pub const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_DST).union(wgpu::BufferUsages::COPY_SRC);
pub const READBACK: wgpu::BufferUsages = wgpu::BufferUsages::MAP_READ.union(wgpu::BufferUsages::COPY_DST);

/// Kernel timestamps of one set (when the adapter supports them).
pub struct Timer {
    pub queries: wgpu::QuerySet,
    pub resolve: wgpu::Buffer,
}

impl Timer {
    pub fn new(ctx: &GpuContext) -> Option<Self> {
        ctx.timestamps.then(|| Timer {
            queries: ctx.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("kernel time"), ty: wgpu::QueryType::Timestamp, count: 2 }),
            resolve: buffer(ctx, "timestamps", 16, wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
        })
    }

    pub fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites { query_set: &self.queries, beginning_of_pass_write_index: Some(0), end_of_pass_write_index: Some(1) }
    }

    /// Resolves the two timestamps into `staging` at `offset` (16 bytes).
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder, staging: &wgpu::Buffer, offset: u64) {
        enc.resolve_query_set(&self.queries, 0..2, &self.resolve, 0);
        enc.copy_buffer_to_buffer(&self.resolve, 0, staging, offset, 16);
    }

    pub fn seconds(ctx: &GpuContext, bytes: &[u8]) -> f64 {
        let t0 = u64::from_le_bytes(bytes[0..8].try_into().unwrap_or_default());
        let t1 = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
        t1.saturating_sub(t0) as f64 * ctx.queue.get_timestamp_period() as f64 * 1e-9
    }
}

/// A submitted chunk whose staging buffer is being mapped.
pub struct InFlight {
    pub set: usize,
    pub chunk: usize,
    pub index: wgpu::SubmissionIndex,
    pub mapped: Mapping,
}

/// Submits `enc` and asks for `staging[..len]` to be mapped once it has run.
pub fn submit(ctx: &GpuContext, enc: wgpu::CommandEncoder, staging: &wgpu::Buffer, len: u64, set: usize, chunk: usize) -> InFlight {
    let index = ctx.queue.submit([enc.finish()]);
    let (tx, mapped) = mpsc::channel();
    staging.slice(..len).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    InFlight { set, chunk, index, mapped }
}

/// Waits for `f` to finish and for its staging buffer to be mapped.
pub fn wait_mapped(ctx: &GpuContext, f: &InFlight) -> Result<()> {
    wait_map(ctx, &f.mapped, f.index.clone(), "reading back from the GPU")
}

/// A persistent host-visible buffer the host fills and the device copies from: it replaces
/// `Queue::write_buffer`, which allocates a new staging buffer per call and fills it on one
/// thread. It stays mapped while the host owns it; after its copy is submitted it is mapped
/// again in the background, and [`Upload::fill`] waits for that only if it has not finished.
pub struct Upload {
    pub buffer: wgpu::Buffer,
    /// The pending re-map (None: mapped, ready to fill), with the submission that copies from
    /// the buffer: waiting for that one, not for the whole queue, keeps the later chunks in
    /// flight while this buffer is refilled.
    remap: std::sync::Mutex<Option<(wgpu::SubmissionIndex, Mapping)>>,
}

type Mapping = mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

/// Seconds an [`Upload::fill`] spent waiting for the device to release the buffer (its copy
/// of an earlier chunk), and filling it.
#[derive(Clone, Copy, Debug)]
pub struct FillTimes {
    pub wait: f64,
    pub fill: f64,
}

/// Bytes each worker copies into an upload buffer at a time.
pub const FILL_BLOCK: usize = 1 << 20;

/// Bytes of a fill per thread at least: each thread is spawned for one fill, and on the H200
/// machine a chunk cost about 0.4 ms beyond its copy, which 16 spawns per 16 MiB chunk
/// would explain; four threads still copy faster than PCIe moves the data.
const FILL_PER_THREAD: usize = 4 << 20;

impl Upload {
    pub fn new(ctx: &GpuContext, label: &str, size: u64) -> Self {
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        Self { buffer, remap: std::sync::Mutex::new(None) }
    }

    /// Fills bytes `..len` with `fill(block, offset)` for blocks of [`FILL_BLOCK`] bytes (the
    /// last one shorter), on as many threads as the pool has, then unmaps the buffer for the
    /// device's copy. Meanwhile the calling thread runs `beside`: the callers record the
    /// chunk's commands and read back an earlier chunk there (on the H200 machine a 16 MiB
    /// chunk took 0.8 ms to fill, 0.4 to read back and 0.3 to plan and record, which ran
    /// between the fills while the device waited). Returns what `beside` returned and where
    /// the time went.
    pub fn fill<T>(&self, ctx: &GpuContext, len: usize, fill: impl Fn(&mut wgpu::WriteOnly<'_, [u8]>, usize) + Sync, beside: impl FnOnce() -> Result<T>) -> Result<(T, FillTimes)> {
        let start = Instant::now();
        if let Some((copy, rx)) = self.remap.lock().unwrap_or_else(|p| p.into_inner()).take() {
            wait_map(ctx, &rx, copy, "mapping an upload buffer")?;
        }
        let waited = start.elapsed();
        let start = Instant::now();
        let (side, filled) = {
            let mut view = self.buffer.slice(..len as u64).get_mapped_range_mut().map_err(|e| ctx.mapping_failed("mapping an upload buffer", e))?;
            // Mapped memory may be write-combined, so wgpu hands it out write-only; whole
            // fixed-size blocks may cross threads, the tail is filled here.
            let (blocks, mut rest) = view.slice(..).into_chunks::<FILL_BLOCK>();
            let blocks: Vec<wgpu::WriteOnly<'_, [u8; FILL_BLOCK]>> = blocks.into_iter().collect();
            let tail_at = blocks.len() * FILL_BLOCK;
            let fill_all = |blocks: Vec<(usize, wgpu::WriteOnly<'_, [u8; FILL_BLOCK]>)>| {
                for (k, b) in blocks {
                    let mut b: wgpu::WriteOnly<'_, [u8]> = b.into();
                    fill(&mut b, k * FILL_BLOCK)
                }
                Instant::now()
            };
            // Plain scoped threads, not the rayon pool: the caller holds the GPU backend's
            // lock, and a rayon worker waiting for its fill tasks would steal other work (say
            // another tensor of the converter) that waits for that same lock: a deadlock.
            let threads = crate::threads::num_threads().min(len.div_ceil(FILL_PER_THREAD)).min(blocks.len());
            if threads > 1 {
                let per = blocks.len().div_ceil(threads);
                let mut blocks = blocks.into_iter().enumerate();
                let fill_all = &fill_all;
                std::thread::scope(|s| {
                    let mut workers = Vec::new();
                    loop {
                        let mine: Vec<_> = blocks.by_ref().take(per).collect();
                        if mine.is_empty() {
                            break;
                        }
                        workers.push(s.spawn(move || fill_all(mine)));
                    }
                    fill(&mut rest, tail_at);
                    let side = beside();
                    let ends: Vec<Instant> = workers.into_iter().map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect();
                    (side, ends.into_iter().max().unwrap_or(start) - start)
                })
            } else {
                fill_all(blocks.into_iter().enumerate().collect());
                fill(&mut rest, tail_at);
                let filled = start.elapsed();
                (beside(), filled)
            }
        };
        self.buffer.unmap();
        Ok((side?, FillTimes { wait: waited.as_secs_f64(), fill: filled.as_secs_f64() }))
    }

    /// Asks for the buffer to be mapped again once `copy`, the submission that copies from it,
    /// has run.
    pub fn remap(&self, copy: wgpu::SubmissionIndex) {
        let (tx, rx) = mpsc::channel();
        self.buffer.slice(..).map_async(wgpu::MapMode::Write, move |r| {
            let _ = tx.send(r);
        });
        *self.remap.lock().unwrap_or_else(|p| p.into_inner()) = Some((copy, rx));
    }
}

/// Writes into `block` (bytes `at..at + block.len()` of an upload buffer) what falls there of
/// the sources: source `i` is `part(i)`, placed at byte `starts[i]` (ascending, no overlaps;
/// bytes between sources are left as they were). Every fill thread calls it for its own blocks.
pub fn gather<'s>(block: &mut wgpu::WriteOnly<'_, [u8]>, at: usize, starts: &[usize], part: impl Fn(usize) -> &'s [u8]) {
    let end = at + block.len();
    let mut i = starts.partition_point(|&s| s <= at).saturating_sub(1);
    while i < starts.len() && starts[i] < end {
        let src = part(i);
        let (a, b) = (starts[i].max(at), (starts[i] + src.len()).min(end));
        if a < b {
            block.slice(a - at..b - at).copy_from_slice(&src[a - starts[i]..b - starts[i]]);
        }
        i += 1;
    }
}

/// `dst.copy_from_slice(src)` for a read-back, on several threads when it is large: one thread
/// copying out of a mapped buffer is slower than a PCIe link fills it, and dequantize reads
/// back four bytes per value. Plain scoped threads, as in [`Upload::fill`].
pub fn copy_out(dst: &mut [u8], src: &[u8]) {
    let threads = crate::threads::num_threads().min(dst.len() / FILL_PER_THREAD);
    if threads < 2 {
        dst.copy_from_slice(src);
        return;
    }
    let per = dst.len().div_ceil(threads).next_multiple_of(64);
    std::thread::scope(|s| {
        let mut parts = dst.chunks_mut(per).zip(src.chunks(per));
        let first = parts.next();
        for (d, from) in parts {
            s.spawn(move || d.copy_from_slice(from));
        }
        // The calling thread copies a part too, rather than only waiting.
        if let Some((d, from)) = first {
            d.copy_from_slice(from);
        }
    });
}

/// Blocks until a `map_async` reports, waiting for `after` (the submission the mapping waits
/// for) if it has not yet; `what` names the mapping in errors.
fn wait_map(ctx: &GpuContext, rx: &Mapping, after: wgpu::SubmissionIndex, what: &str) -> Result<()> {
    let r = match rx.try_recv() {
        Ok(r) => r,
        Err(_) => {
            ctx.wait(after)?;
            match rx.try_recv() {
                Ok(r) => r,
                Err(_) => {
                    ctx.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| QuantError::Device(format!("waiting for the GPU failed: {e}")))?;
                    rx.recv().map_err(|_| QuantError::Device(format!("{what}: the mapping was dropped")))?
                }
            }
        }
    };
    r.map_err(|e| QuantError::Device(format!("{what} failed: {e} (adapter {})", ctx.describe())))?;
    ctx.check()
}

/// `dispatch_workgroups` for `n` invocations of 256 (2-D past the per-dimension limit).
pub fn dispatch(ctx: &GpuContext, pass: &mut wgpu::ComputePass<'_>, n: usize) {
    let (x, y) = super::plan::dispatch_dims(n, ctx.limits.max_compute_workgroups_per_dimension);
    pass.dispatch_workgroups(x, y, 1);
}

#[cfg(test)]
mod tests {
    /// Whatever the split across threads (none below 8 MiB on two threads, uneven parts above),
    /// every byte arrives where it belongs.
    #[test]
    fn copy_out_copies_every_byte() {
        for n in [0usize, 1, 4 << 20, (9 << 20) + 3, (33 << 20) + 65] {
            let src: Vec<u8> = (0..n).map(|i| (i ^ (i >> 9) ^ (i >> 17)) as u8).collect();
            let mut dst = vec![0u8; n];
            super::copy_out(&mut dst, &src);
            assert!(dst == src, "{n} bytes");
        }
    }
}
