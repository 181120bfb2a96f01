//! Dequantize on the GPU: one invocation per output element.

use std::collections::VecDeque;

use crate::backend::DequantJob;
use crate::error::Result;

use super::context::GpuContext;
use super::plan::{Caps, Chunk, Seg, Uniforms};
use super::staging::{self, buffer, InFlight, Timer, READBACK, STORAGE};

pub struct DequantSet {
    uniform: wgpu::Buffer,
    segs: wgpu::Buffer,
    packed: wgpu::Buffer,
    scales: wgpu::Buffer,
    zero_points: wgpu::Buffer,
    out: wgpu::Buffer,
    staging: wgpu::Buffer,
    bind: wgpu::BindGroup,
    timer: Option<Timer>,
}

impl DequantSet {
    pub fn new(ctx: &GpuContext, caps: &Caps) -> Self {
        let uniform = buffer(ctx, "uniforms", 16, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST);
        let segs = buffer(ctx, "segments", caps.segs as u64 * 48, STORAGE);
        let packed = buffer(ctx, "packed", caps.words as u64 * 4, STORAGE);
        let scales = buffer(ctx, "scales", caps.groups as u64 * 4, STORAGE);
        let zero_points = buffer(ctx, "zero points", caps.groups as u64 * 4, STORAGE);
        let out = buffer(ctx, "weights", caps.elems as u64 * 4, STORAGE);
        let staging = buffer(ctx, "read-back", caps.elems as u64 * 4 + 16, READBACK);
        let entries: Vec<wgpu::BindGroupEntry> = [&uniform, &segs, &packed, &scales, &zero_points, &out]
            .iter()
            .enumerate()
            .map(|(b, buf)| wgpu::BindGroupEntry { binding: b as u32, resource: buf.as_entire_binding() })
            .collect();
        let bind = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("dequantize"), layout: &ctx.dequant_layout, entries: &entries });
        Self { uniform, segs, packed, scales, zero_points, out, staging, bind, timer: Timer::new(ctx) }
    }
}

/// Whether the shader's exactness argument covers these parameters: `scale` is +0 or a
/// positive finite value below 2^118, `lo` is finite with |lo| < 2^126 (so no sum overflows).
/// Everything our quantizer writes qualifies except ranges wider than ~2^125; other jobs run on
/// the CPU.
pub fn params_ok(scales: &[f32], zero_points: &[f32]) -> bool {
    const SCALE_MAX: u32 = (127 + 118) << 23;
    const LO_MAX: u32 = (127 + 126) << 23;
    scales.iter().zip(zero_points).all(|(s, z)| s.to_bits() < SCALE_MAX && z.to_bits() & 0x7fff_ffff < LO_MAX)
}

pub fn run(ctx: &GpuContext, sets: &[DequantSet; 2], caps: &Caps, jobs: &mut [DequantJob<'_>], chunks: &[Chunk], timed: bool) -> Result<Option<f64>> {
    let time_at = caps.elems as u64 * 4;
    let len = time_at + 16;
    let mut kernel = (timed && ctx.timestamps).then_some(0.0);
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let finish = |f: InFlight, jobs: &mut [DequantJob<'_>], kernel: &mut Option<f64>| -> Result<()> {
        staging::wait_mapped(ctx, &f)?;
        let set = &sets[f.set];
        {
            let view = set.staging.slice(..len).get_mapped_range().map_err(|e| ctx.mapping_failed("mapping the read-back buffer", e))?;
            for p in &chunks[f.chunk].pieces {
                let at = p.seg.elem_start as usize * 4;
                bytemuck::cast_slice_mut::<f32, u8>(&mut jobs[p.job].out[p.elems.clone()]).copy_from_slice(&view[at..at + p.elems.len() * 4]);
            }
            if let Some(k) = kernel.as_mut() {
                *k += Timer::seconds(ctx, &view[time_at as usize..len as usize]);
            }
        }
        set.staging.unmap();
        Ok(())
    };
    for (ci, chunk) in chunks.iter().enumerate() {
        let si = ci % 2;
        if inflight.len() == 2 {
            finish(inflight.pop_front().expect("two in flight"), jobs, &mut kernel)?;
        }
        let set = &sets[si];
        let segs: Vec<Seg> = chunk.pieces.iter().map(|p| p.seg).collect();
        let q = &ctx.queue;
        q.write_buffer(&set.uniform, 0, bytemuck::bytes_of(&Uniforms { n_segs: segs.len() as u32, n_units: chunk.n_elems as u32, zero_mask: 0, pad: 0 }));
        q.write_buffer(&set.segs, 0, bytemuck::cast_slice(&segs));
        for p in &chunk.pieces {
            let job = &jobs[p.job];
            let bytes = &job.packed[p.bytes.clone()];
            // Copies must be multiples of 4 bytes: the last 1–3 bytes go through a padded word.
            let whole = bytes.len() / 4 * 4;
            let at = p.seg.word_start as u64 * 4;
            if whole > 0 {
                q.write_buffer(&set.packed, at, &bytes[..whole]);
            }
            if whole < bytes.len() {
                let mut last = [0u8; 4];
                last[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
                q.write_buffer(&set.packed, at + whole as u64, &last);
            }
            let g = p.seg.group_start as u64 * 4;
            q.write_buffer(&set.scales, g, bytemuck::cast_slice(&job.scales[p.groups.clone()]));
            q.write_buffer(&set.zero_points, g, bytemuck::cast_slice(&job.zero_points[p.groups.clone()]));
        }
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("dequantize") });
        {
            let timer = set.timer.as_ref().filter(|_| kernel.is_some());
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("dequantize"), timestamp_writes: timer.map(Timer::writes) });
            pass.set_pipeline(&ctx.dequant_pipeline);
            pass.set_bind_group(0, &set.bind, &[]);
            staging::dispatch(ctx, &mut pass, chunk.n_elems);
        }
        enc.copy_buffer_to_buffer(&set.out, 0, &set.staging, 0, chunk.n_elems as u64 * 4);
        if let (Some(t), Some(_)) = (&set.timer, kernel) {
            t.resolve(&mut enc, &set.staging, time_at);
        }
        inflight.push_back(staging::submit(ctx, enc, &set.staging, len, si, ci));
    }
    while let Some(f) = inflight.pop_front() {
        finish(f, jobs, &mut kernel)?;
    }
    Ok(kernel)
}
