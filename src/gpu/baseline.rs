//! What the hardware can do, measured with the same buffers and sizes the kernels use, so the
//! benchmark can report the kernels and the whole path as fractions of it:
//!
//! * [`device_copy`]: a buffer-to-buffer copy on the device (the memory-speed ceiling of a
//!   kernel that reads its input once);
//! * [`upload`]: host → device through a ring of persistent mapped staging buffers, filled by
//!   every core, three chunks in flight (the ceiling of any path whose data starts in host
//!   memory). Unlike `Queue::write_buffer`, which allocates a staging buffer per call and fills
//!   it on one thread, this is what a well-fed upload looks like.

use std::sync::mpsc;
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{QuantError, Result};

use super::context::GpuContext;
use super::staging::{buffer, STORAGE};

/// Staging buffers in the upload ring: one being filled, two being copied or waited on.
const RING: usize = 3;
/// Pieces each core copies into a mapped staging buffer.
const FILL_PIECE: usize = 1 << 20;

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
/// ring of [`RING`] persistently allocated `MAP_WRITE` staging buffers: each is filled by the
/// thread pool straight from `data`, unmapped, copied on the device, and mapped again for reuse
/// when its copy is done. The host fills chunk k+1 while the device copies chunk k.
pub fn upload(ctx: &GpuContext, data: &[u8], chunk: usize) -> Result<f64> {
    let chunk = (chunk / 4 * 4).max(4);
    let dst = buffer(ctx, "upload target", chunk as u64, STORAGE);
    let ring: Vec<wgpu::Buffer> = (0..RING)
        .map(|_| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("upload staging"),
                size: chunk as u64,
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            })
        })
        .collect();
    // For each ring slot, the pending re-map of its buffer (None: mapped and ready).
    let mut pending: Vec<Option<mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>>> = (0..RING).map(|_| None).collect();
    let t = Instant::now();
    let mut last = None;
    for (k, piece) in data.chunks(chunk).enumerate() {
        let slot = k % RING;
        let staging = &ring[slot];
        if let Some(rx) = pending[slot].take() {
            wait_map(ctx, &rx)?;
        }
        let len = piece.len() / 4 * 4;
        {
            let mut view = staging
                .slice(..len as u64)
                .get_mapped_range_mut()
                .map_err(|e| QuantError::Device(format!("mapping a staging buffer failed: {e}")))?;
            // Mapped memory may be write-combined: wgpu hands it out write-only. Whole pieces
            // (fixed-size arrays, which may cross threads) are filled by the pool, the rest here.
            let (pieces, rest) = view.slice(..).into_chunks::<FILL_PIECE>();
            let pieces: Vec<wgpu::WriteOnly<'_, [u8; FILL_PIECE]>> = pieces.into_iter().collect();
            let (head, tail) = piece[..len].split_at(pieces.len() * FILL_PIECE);
            crate::threads::install(|| {
                pieces.into_par_iter().zip(head.par_chunks(FILL_PIECE)).for_each(|(d, s)| {
                    let mut d: wgpu::WriteOnly<'_, [u8]> = d.into();
                    d.copy_from_slice(s)
                })
            });
            let mut rest = rest;
            rest.copy_from_slice(tail);
        }
        staging.unmap();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(staging, 0, &dst, 0, len as u64);
        last = Some(ctx.queue.submit([enc.finish()]));
        let (tx, rx) = mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Write, move |r| {
            let _ = tx.send(r);
        });
        pending[slot] = Some(rx);
        ctx.check()?;
    }
    if let Some(idx) = last {
        ctx.wait(idx)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Blocks until a `map_async` reports, polling the device.
fn wait_map(ctx: &GpuContext, rx: &mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>) -> Result<()> {
    let r = match rx.try_recv() {
        Ok(r) => r,
        Err(_) => {
            ctx.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| QuantError::Device(format!("waiting for the GPU failed: {e}")))?;
            rx.recv().map_err(|_| QuantError::Device("a staging buffer's mapping was dropped".into()))?
        }
    };
    r.map_err(|e| QuantError::Device(format!("mapping a staging buffer failed: {e} (adapter {})", ctx.describe())))?;
    ctx.check()
}
