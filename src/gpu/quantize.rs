//! Quantize on the GPU: per chunk, one dispatch of the fused kernel (`quantize_pass`, one
//! workgroup per tile of whole groups; see `shaders/quantize.wgsl` and `plan::tiles`).

use std::collections::VecDeque;
use std::time::Instant;

use crate::backend::QuantJob;
use crate::error::Result;

use super::context::GpuContext;
use super::plan::{self, Caps, Chunk, Seg, Tile, Uniforms};
use super::staging::{self, buffer, InFlight, Timer, Upload, READBACK, STORAGE};

/// Buffer sets used in turn: one being filled by the host while up to two are on the device
/// or being read back.
pub const SETS: usize = 3;

pub struct QuantSet {
    uniform: wgpu::Buffer,
    /// The chunk's weights, filled by the host in place of `Queue::write_buffer`.
    upload: Upload,
    segs: wgpu::Buffer,
    tiles: wgpu::Buffer,
    input: wgpu::Buffer,
    errs: wgpu::Buffer,
    words: wgpu::Buffer,
    scales: wgpu::Buffer,
    zero_points: wgpu::Buffer,
    staging: wgpu::Buffer,
    bind: wgpu::BindGroup,
    timer: Option<Timer>,
}

/// Offsets in the staging buffer: packed words, scales, zero points, error flags, timestamps.
struct Layout {
    scales: u64,
    zero_points: u64,
    errs: u64,
    time: u64,
    len: u64,
}

fn layout(caps: &Caps) -> Layout {
    let scales = caps.words as u64 * 4;
    let zero_points = scales + caps.groups as u64 * 4;
    let errs = zero_points + caps.groups as u64 * 4;
    let time = errs + caps.segs as u64 * 4;
    Layout { scales, zero_points, errs, time, len: time + 16 }
}

impl QuantSet {
    pub fn new(ctx: &GpuContext, caps: &Caps) -> Self {
        let uniform = buffer(ctx, "uniforms", 16, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST);
        let segs = buffer(ctx, "segments", caps.segs as u64 * 48, STORAGE);
        // Whole 16-byte words: the kernel reads the input as `array<vec4<u32>>`.
        let input = buffer(ctx, "weights", caps.elems.next_multiple_of(4) as u64 * 4, STORAGE);
        let upload = Upload::new(ctx, "weights upload", caps.elems.next_multiple_of(4) as u64 * 4);
        let tiles = buffer(ctx, "tiles", (plan::max_tiles(caps) * std::mem::size_of::<Tile>()) as u64, STORAGE);
        let words = buffer(ctx, "packed", caps.words as u64 * 4, STORAGE);
        let scales = buffer(ctx, "scales", caps.groups as u64 * 4, STORAGE);
        let zero_points = buffer(ctx, "zero points", caps.groups as u64 * 4, STORAGE);
        let errs = buffer(ctx, "errors", caps.segs as u64 * 4, STORAGE);
        let staging = buffer(ctx, "read-back", layout(caps).len, READBACK);
        let entries: Vec<wgpu::BindGroupEntry> = [&uniform, &segs, &input, &tiles, &words, &scales, &zero_points, &errs]
            .iter()
            .enumerate()
            .map(|(b, buf)| wgpu::BindGroupEntry { binding: b as u32, resource: buf.as_entire_binding() })
            .collect();
        let bind = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("quantize"), layout: &ctx.quant_layout, entries: &entries });
        Self { uniform, upload, segs, tiles, input, errs, words, scales, zero_points, staging, bind, timer: Timer::new(ctx) }
    }
}

/// Where a quantize call's time went, in seconds: the kernels (GPU timestamps, where the adapter
/// has them), and on the host: filling the upload buffers, waiting for the device (for a free
/// upload buffer or for a chunk's results), and copying results into the outputs. A chunk's
/// results are copied while the fill threads fill the next chunk, so the three can add up to
/// more than the call's wall time; whatever the host spends elsewhere (planning, submitting)
/// is not in them. Also how many blocks the
/// GPU left to the CPU reference (ggml's types: blocks past the kernels' bounds; 0 for min/max).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stages {
    pub kernel: Option<f64>,
    pub fill: f64,
    pub wait: f64,
    pub read: f64,
    pub redone: usize,
}

impl Stages {
    pub fn add(self, o: Stages) -> Stages {
        let kernel = match (self.kernel, o.kernel) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        Stages { kernel, fill: self.fill + o.fill, wait: self.wait + o.wait, read: self.read + o.read, redone: self.redone + o.redone }
    }
}

/// Runs every job of `chunks` (built from `jobs`) with `pipeline` (the context's min/max or lsq
/// quantize pipeline; every job of the chunks must have that method). Returns the jobs with an invalid group
/// (NaN/Inf or overflowing range) and where the time went (kernel time when `timed` and supported).
pub fn run(ctx: &GpuContext, pipeline: &wgpu::ComputePipeline, sets: &[QuantSet; SETS], caps: &Caps, jobs: &mut [QuantJob<'_>], chunks: &[Chunk], timed: bool) -> Result<(Vec<usize>, Stages)> {
    let lay = layout(caps);
    let mut failed = Vec::new();
    let mut stages = Stages { kernel: (timed && ctx.timestamps).then_some(0.0), ..Stages::default() };
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let finish = |f: InFlight, jobs: &mut [QuantJob<'_>], failed: &mut Vec<usize>, stages: &mut Stages| -> Result<()> {
        let waiting = Instant::now();
        staging::wait_mapped(ctx, &f)?;
        stages.wait += waiting.elapsed().as_secs_f64();
        let reading = Instant::now();
        let set = &sets[f.set];
        {
            let view = set.staging.slice(..lay.len).get_mapped_range().map_err(|e| ctx.mapping_failed("mapping the read-back buffer", e))?;
            for (i, p) in chunks[f.chunk].pieces.iter().enumerate() {
                let job = &mut jobs[p.job];
                let s = &p.seg;
                let w = s.word_start as usize * 4;
                job.packed[p.bytes.clone()].copy_from_slice(&view[w..w + p.bytes.len()]);
                let (g, n) = (s.group_start as usize * 4, p.groups.len() * 4);
                let sc = lay.scales as usize + g;
                bytemuck::cast_slice_mut::<f32, u8>(&mut job.scales[p.groups.clone()]).copy_from_slice(&view[sc..sc + n]);
                let zp = lay.zero_points as usize + g;
                bytemuck::cast_slice_mut::<f32, u8>(&mut job.zero_points[p.groups.clone()]).copy_from_slice(&view[zp..zp + n]);
                let e = lay.errs as usize + i * 4;
                if view[e..e + 4] != [0; 4] {
                    failed.push(p.job);
                }
            }
            if let Some(k) = stages.kernel.as_mut() {
                *k += Timer::seconds(ctx, &view[lay.time as usize..lay.time as usize + 16]);
            }
        }
        set.staging.unmap();
        stages.read += reading.elapsed().as_secs_f64();
        Ok(())
    };
    // The inputs apart from the outputs: a chunk is filled from the one while an earlier
    // chunk's results are copied into the other.
    let weights: Vec<&[f32]> = jobs.iter().map(|j| j.weights).collect();
    for (ci, chunk) in chunks.iter().enumerate() {
        let si = ci % SETS;
        // With every set in flight the oldest is this chunk's set: it is read back while the
        // upload buffer is filled, and is free again before this chunk is submitted.
        let oldest = (inflight.len() == SETS).then(|| inflight.pop_front().expect("a set in flight"));
        let set = &sets[si];
        let bytes = chunk.n_elems * 4;
        // The chunk's plan, uniforms and commands, recorded on this thread while the fill
        // threads copy its weights (they are submitted once the upload buffer is unmapped): on
        // the H200 machine they took a quarter of a chunk's time when they ran before the fill.
        let timed_kernel = stages.kernel.is_some();
        let encode = || {
            let segs: Vec<Seg> = chunk.pieces.iter().map(|p| p.seg).collect();
            let n_segs = segs.len() as u32;
            let q = &ctx.queue;
            let (tiles, shared_words) = plan::tiles(chunk);
            q.write_buffer(&set.uniform, 0, bytemuck::bytes_of(&Uniforms { n_segs, n_units: tiles.len() as u32, zero_mask: 0, pad: 0 }));
            q.write_buffer(&set.segs, 0, bytemuck::cast_slice(&segs));
            q.write_buffer(&set.tiles, 0, bytemuck::cast_slice(&tiles));
            let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("quantize") });
            enc.copy_buffer_to_buffer(&set.upload.buffer, 0, &set.input, 0, bytes.next_multiple_of(4) as u64);
            enc.clear_buffer(&set.errs, 0, Some(n_segs as u64 * 4));
            if shared_words {
                enc.clear_buffer(&set.words, 0, Some(chunk.n_words as u64 * 4));
            }
            {
                let timer = set.timer.as_ref().filter(|_| timed_kernel);
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("quantize"), timestamp_writes: timer.map(Timer::writes) });
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &set.bind, &[]);
                // `dispatch` counts invocations in workgroups of 256: one workgroup per tile.
                staging::dispatch(ctx, &mut pass, tiles.len() * 256);
            }
            let (ng, nw) = (chunk.n_groups as u64 * 4, chunk.n_words as u64 * 4);
            enc.copy_buffer_to_buffer(&set.words, 0, &set.staging, 0, nw);
            enc.copy_buffer_to_buffer(&set.scales, 0, &set.staging, lay.scales, ng);
            enc.copy_buffer_to_buffer(&set.zero_points, 0, &set.staging, lay.zero_points, ng);
            enc.copy_buffer_to_buffer(&set.errs, 0, &set.staging, lay.errs, n_segs as u64 * 4);
            if let (Some(t), true) = (&set.timer, timed_kernel) {
                t.resolve(&mut enc, &set.staging, lay.time);
            }
            enc
        };
        // The pieces lie back to back in the input buffer (`plan`): every core copies its
        // blocks of it straight from the jobs' slices.
        let starts: Vec<usize> = chunk.pieces.iter().map(|p| p.seg.elem_start as usize * 4).collect();
        let weights = |i: usize| -> &[u8] { bytemuck::cast_slice(&weights[chunk.pieces[i].job][chunk.pieces[i].elems.clone()]) };
        let copy_in = |block: &mut wgpu::WriteOnly<'_, [u8]>, at: usize| staging::gather(block, at, &starts, weights);
        let encode_and_read_oldest = || {
            let enc = encode();
            oldest.map_or(Ok(()), |f| finish(f, jobs, &mut failed, &mut stages))?;
            Ok(enc)
        };
        let (enc, took) = set.upload.fill(ctx, bytes, copy_in, encode_and_read_oldest)?;
        stages.fill += took.fill;
        stages.wait += took.wait;
        let f = staging::submit(ctx, enc, &set.staging, lay.len, si, ci);
        set.upload.remap(f.index.clone());
        inflight.push_back(f);
    }
    while let Some(f) = inflight.pop_front() {
        finish(f, jobs, &mut failed, &mut stages)?;
    }
    Ok((failed, stages))
}
