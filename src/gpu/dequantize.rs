//! Dequantize on the GPU: one invocation per output element. Each chunk's packed codes, scales
//! and zero points are gathered by the fill threads into one persistent mapped buffer
//! ([`Upload`]), copied into the kernel's buffers on the device, and the f32 results read back
//! (on several threads when large) while later chunks run, as quantize does.

use std::collections::VecDeque;
use std::time::Instant;

use crate::backend::DequantJob;
use crate::error::Result;

use super::context::GpuContext;
use super::plan::{Caps, Chunk, Seg, Uniforms};
use super::quantize::Stages;
use super::staging::{self, buffer, InFlight, Timer, Upload, READBACK, STORAGE};

/// Buffer sets used in turn: one being filled by the host while up to two are on the device or
/// being read back.
pub const SETS: usize = 3;

pub struct DequantSet {
    uniform: wgpu::Buffer,
    segs: wgpu::Buffer,
    /// A chunk's packed words, then its scales, then its zero points, back to back.
    upload: Upload,
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
        let upload = Upload::new(ctx, "dequantize upload", (caps.words + 2 * caps.groups) as u64 * 4);
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
        Self { uniform, segs, upload, packed, scales, zero_points, out, staging, bind, timer: Timer::new(ctx) }
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

/// Zero bytes that complete a piece's last packed word.
const PAD: [u8; 3] = [0; 3];

/// Runs every job of `chunks` (built from `jobs`); returns where the time went (kernel time
/// when `timed` and supported).
pub fn run(ctx: &GpuContext, sets: &[DequantSet; SETS], caps: &Caps, jobs: &mut [DequantJob<'_>], chunks: &[Chunk], timed: bool) -> Result<Stages> {
    let time_at = caps.elems as u64 * 4;
    let len = time_at + 16;
    let mut stages = Stages { kernel: (timed && ctx.timestamps).then_some(0.0), ..Stages::default() };
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let finish = |f: InFlight, jobs: &mut [DequantJob<'_>], stages: &mut Stages| -> Result<()> {
        let waiting = Instant::now();
        staging::wait_mapped(ctx, &f)?;
        stages.wait += waiting.elapsed().as_secs_f64();
        let reading = Instant::now();
        let set = &sets[f.set];
        {
            let view = set.staging.slice(..len).get_mapped_range().map_err(|e| ctx.mapping_failed("mapping the read-back buffer", e))?;
            for p in &chunks[f.chunk].pieces {
                let at = p.seg.elem_start as usize * 4;
                staging::copy_out(bytemuck::cast_slice_mut::<f32, u8>(&mut jobs[p.job].out[p.elems.clone()]), &view[at..at + p.elems.len() * 4]);
            }
            if let Some(k) = stages.kernel.as_mut() {
                *k += Timer::seconds(ctx, &view[time_at as usize..len as usize]);
            }
        }
        set.staging.unmap();
        stages.read += reading.elapsed().as_secs_f64();
        Ok(())
    };
    // The inputs apart from the outputs: a chunk is gathered from the one while an earlier
    // chunk's results are copied into the other.
    let inputs: Vec<(&[u8], [&[f32]; 2])> = jobs.iter().map(|j| (j.packed, [j.scales, j.zero_points])).collect();
    for (ci, chunk) in chunks.iter().enumerate() {
        let si = ci % SETS;
        // With every set in flight the oldest is this chunk's set: read back while the upload
        // buffer is filled, free again before this chunk is submitted.
        let oldest = (inflight.len() == SETS).then(|| inflight.pop_front().expect("a set in flight"));
        let set = &sets[si];
        // Where each input lands in the upload buffer: the pieces' packed bytes at their words
        // (a partial last word completed with zeros), then the scales, then the zero points.
        let (nw, ng) = (chunk.n_words * 4, chunk.n_groups * 4);
        let mut starts: Vec<usize> = Vec::with_capacity(4 * chunk.pieces.len());
        let mut parts: Vec<&[u8]> = Vec::with_capacity(4 * chunk.pieces.len());
        for p in &chunk.pieces {
            let (packed, at) = (&inputs[p.job].0[p.bytes.clone()], p.seg.word_start as usize * 4);
            starts.push(at);
            parts.push(packed);
            let pad = packed.len().next_multiple_of(4) - packed.len();
            if pad > 0 {
                starts.push(at + packed.len());
                parts.push(&PAD[..pad]);
            }
        }
        for (k, base) in [nw, nw + ng].into_iter().enumerate() {
            for p in &chunk.pieces {
                starts.push(base + p.seg.group_start as usize * 4);
                parts.push(bytemuck::cast_slice(&inputs[p.job].1[k][p.groups.clone()]));
            }
        }
        debug_assert!(starts.windows(2).all(|w| w[0] < w[1]), "pieces in ascending order");
        let timed_kernel = stages.kernel.is_some();
        // Recorded while the fill threads gather the chunk's inputs; submitted after.
        let encode = || {
            let segs: Vec<Seg> = chunk.pieces.iter().map(|p| p.seg).collect();
            let q = &ctx.queue;
            q.write_buffer(&set.uniform, 0, bytemuck::bytes_of(&Uniforms { n_segs: segs.len() as u32, n_units: chunk.n_elems as u32, zero_mask: 0, pad: 0 }));
            q.write_buffer(&set.segs, 0, bytemuck::cast_slice(&segs));
            let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("dequantize") });
            let up = &set.upload.buffer;
            enc.copy_buffer_to_buffer(up, 0, &set.packed, 0, nw as u64);
            enc.copy_buffer_to_buffer(up, nw as u64, &set.scales, 0, ng as u64);
            enc.copy_buffer_to_buffer(up, (nw + ng) as u64, &set.zero_points, 0, ng as u64);
            {
                let timer = set.timer.as_ref().filter(|_| timed_kernel);
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("dequantize"), timestamp_writes: timer.map(Timer::writes) });
                pass.set_pipeline(&ctx.dequant_pipeline);
                pass.set_bind_group(0, &set.bind, &[]);
                staging::dispatch(ctx, &mut pass, chunk.n_elems);
            }
            enc.copy_buffer_to_buffer(&set.out, 0, &set.staging, 0, chunk.n_elems as u64 * 4);
            if let (Some(t), true) = (&set.timer, timed_kernel) {
                t.resolve(&mut enc, &set.staging, time_at);
            }
            enc
        };
        let encode_and_read_oldest = || {
            let enc = encode();
            oldest.map_or(Ok(()), |f| finish(f, jobs, &mut stages))?;
            Ok(enc)
        };
        let gather = |block: &mut wgpu::WriteOnly<'_, [u8]>, at: usize| staging::gather(block, at, &starts, |i| parts[i]);
        let (enc, took) = set.upload.fill(ctx, nw + 2 * ng, gather, encode_and_read_oldest)?;
        stages.fill += took.fill;
        stages.wait += took.wait;
        let f = staging::submit(ctx, enc, &set.staging, len, si, ci);
        set.upload.remap(f.index.clone());
        inflight.push_back(f);
    }
    while let Some(f) = inflight.pop_front() {
        finish(f, jobs, &mut stages)?;
    }
    Ok(stages)
}
