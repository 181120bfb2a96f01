//! What the hardware can do, measured with the same buffers and sizes the kernels use, so the
//! benchmark can report the kernels and the whole path as fractions of it:
//!
//! * [`device_copy`]: a buffer-to-buffer copy on the device (the memory-speed ceiling of a
//!   kernel that reads its input once);
//! * [`upload`]: host → device through a ring of persistent mapped staging buffers, filled by
//!   every core, three chunks in flight (the ceiling of any path whose data starts in host
//!   memory). Unlike `Queue::write_buffer`, which allocates a staging buffer per call and fills
//!   it on one thread, this is what a well-fed upload looks like;
//! * [`download`]: device → host the same way (mapped read-back buffers, copied out as the
//!   passes copy their results), the ceiling of dequantize, whose f32 results travel that way.

use std::time::Instant;

use crate::error::Result;

use super::context::GpuContext;
use super::staging::{self, buffer, InFlight, Upload, READBACK, STORAGE};

/// Staging buffers in the upload ring: one being filled, two being copied or waited on.
const RING: usize = 3;

/// Seconds per copy of `bytes` (a multiple of 4) from one device buffer to another: the best of
/// `reps` submissions of `inner` copies each (wall time / `inner`, so submission costs fade).
pub fn device_copy(ctx: &GpuContext, bytes: u64, reps: usize) -> Result<f64> {
    let bytes = bytes / 4 * 4;
    let src = buffer(ctx, "copy source", bytes, STORAGE);
    let dst = buffer(ctx, "copy target", bytes, STORAGE);
    let inner = 8;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) + 1 {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        for _ in 0..inner {
            enc.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
        }
        let t = Instant::now();
        let idx = ctx.queue.submit([enc.finish()]);
        ctx.wait(idx)?;
        best = best.min(t.elapsed().as_secs_f64() / inner as f64);
    }
    Ok(best)
}

/// Seconds to move `data` into device memory in `chunk`-byte pieces (a multiple of 4) through a
/// ring of [`RING`] [`Upload`] buffers: each is filled by the thread pool straight from `data`,
/// copied on the device, and mapped again for reuse when its copy is done. The host fills chunk
/// k+1 while the device copies chunk k.
pub fn upload(ctx: &GpuContext, data: &[u8], chunk: usize) -> Result<f64> {
    let chunk = (chunk / 4 * 4).max(4);
    let dst = buffer(ctx, "upload target", chunk as u64, STORAGE);
    let ring: Vec<Upload> = (0..RING).map(|_| Upload::new(ctx, "upload staging", chunk as u64)).collect();
    let t = Instant::now();
    let mut last = None;
    for (k, piece) in data.chunks(chunk).enumerate() {
        let up = &ring[k % RING];
        let len = piece.len() / 4 * 4;
        up.fill(ctx, len, |block, at| block.copy_from_slice(&piece[at..at + block.len()]), || Ok(()))?;
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&up.buffer, 0, &dst, 0, len as u64);
        let copy = ctx.queue.submit([enc.finish()]);
        up.remap(copy.clone());
        last = Some(copy);
        ctx.check()?;
    }
    if let Some(idx) = last {
        ctx.wait(idx)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds to move `out.len()` bytes from device memory into `out` in `chunk`-byte pieces (a
/// multiple of 4) through [`RING`] read-back buffers: each piece is copied on the device into
/// one, mapped, and copied out (on several threads, [`staging::copy_out`]) while the next
/// pieces are copied.
pub fn download(ctx: &GpuContext, out: &mut [u8], chunk: usize) -> Result<f64> {
    let chunk = (chunk / 4 * 4).max(4);
    let src = buffer(ctx, "download source", chunk as u64, STORAGE);
    let ring: Vec<wgpu::Buffer> = (0..RING).map(|_| buffer(ctx, "download staging", chunk as u64, READBACK)).collect();
    let n = out.len() / 4 * 4;
    let pieces: Vec<(usize, usize)> = (0..n).step_by(chunk).map(|at| (at, (at + chunk).min(n))).collect();
    let t = Instant::now();
    let mut inflight: std::collections::VecDeque<InFlight> = Default::default();
    let finish = |f: InFlight, out: &mut [u8]| -> Result<()> {
        staging::wait_mapped(ctx, &f)?;
        let (a, b) = pieces[f.chunk];
        {
            let view = ring[f.set].slice(..(b - a) as u64).get_mapped_range().map_err(|e| ctx.mapping_failed("mapping a download buffer", e))?;
            staging::copy_out(&mut out[a..b], &view);
        }
        ring[f.set].unmap();
        Ok(())
    };
    for (k, &(a, b)) in pieces.iter().enumerate() {
        if inflight.len() == RING {
            finish(inflight.pop_front().expect("a buffer in flight"), out)?;
        }
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&src, 0, &ring[k % RING], 0, (b - a) as u64);
        inflight.push_back(staging::submit(ctx, enc, &ring[k % RING], (b - a) as u64, k % RING, k));
    }
    while let Some(f) = inflight.pop_front() {
        finish(f, out)?;
    }
    Ok(t.elapsed().as_secs_f64())
}
