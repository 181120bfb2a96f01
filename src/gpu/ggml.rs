//! ggml's block types on the GPU: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 without an importance matrix
//! (`shaders/ggml_legacy.wgsl`), giving the bytes of [`crate::quant::ggml::quantize`] (which are
//! ggml's).
//!
//! How each hazard is met (the shader's header says the same from its side):
//! * division: integer long division, correctly rounded (`div_rn`, shared with min/max);
//! * fused multiply-add: the product that feeds an addition passes through `opaque`;
//! * subnormals: the kernel is built like lsq's ([`GpuContext::exact_f32_pipeline`]) and runs
//!   only where the subnormal probe passed and the kernel itself reproduced the CPU's bytes on
//!   [`self_test_input`] (extreme, tiny, tied and subnormal blocks); otherwise the type is
//!   refused on that adapter (`QuantError::Unsupported`);
//! * summation order: nothing is summed; each block's extremes are scanned in the reference's
//!   order inside one invocation;
//! * infinities and NaNs, which WGSL leaves indeterminate: a block whose reference arithmetic
//!   would meet one (a non-finite input, a range or an inverse scale past f32) is flagged, and
//!   the host encodes its pair of blocks with the CPU reference.
//!
//! The input is staged through the same persistent mapped buffers as min/max ([`Upload`]), in
//! chunks of whole pairs of blocks; two buffer sets alternate, so chunk k+1 is filled and
//! queued while chunk k runs.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use crate::error::{QuantError, Result};
use crate::quant::ggml::{self, GgmlType, Simd};

use super::context::GpuContext;
use super::plan::{Caps, Uniforms};
use super::quantize::Stages;
use super::staging::{self, buffer, InFlight, Timer, Upload, READBACK, STORAGE};

/// The types with a GPU kernel (without an importance matrix).
pub const TYPES: [GgmlType; 5] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0];

const QK: usize = 32;

/// The shader file with `ty`'s encoder (appended to `ggml_common.wgsl`).
fn family(ty: GgmlType) -> &'static str {
    match ty {
        _ => super::shaders::GGML_LEGACY,
    }
}
/// Largest block of the kernel's types (Q8_0).
const MAX_BLOCK_BYTES: usize = 34;

/// The kernels' shared state: bind group layout, a pipeline per type (built on first use,
/// with its verdict), and the buffer sets.
pub struct GgmlKernels {
    layout: wgpu::BindGroupLayout,
    pipelines: Mutex<HashMap<GgmlType, std::result::Result<wgpu::ComputePipeline, String>>>,
    sets: Mutex<Option<[Set; 2]>>,
    blocks: usize,
}

struct Set {
    uniform: wgpu::Buffer,
    upload: Upload,
    input: wgpu::Buffer,
    words: wgpu::Buffer,
    redo: wgpu::Buffer,
    staging: wgpu::Buffer,
    bind: wgpu::BindGroup,
    timer: Option<Timer>,
}

/// Offsets in a set's read-back buffer: the blocks' bytes, one redo flag per pair, timestamps.
fn offsets(blocks: usize) -> (u64, u64, u64) {
    let redo = (blocks * MAX_BLOCK_BYTES) as u64;
    let time = redo + (blocks / 2) as u64 * 4;
    (redo, time, time + 16)
}

impl Set {
    fn new(ctx: &GpuContext, layout: &wgpu::BindGroupLayout, blocks: usize) -> Self {
        let uniform = buffer(ctx, "ggml uniforms", 16, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST);
        let upload = Upload::new(ctx, "ggml weights upload", (blocks * QK * 4) as u64);
        let input = buffer(ctx, "ggml weights", (blocks * QK * 4) as u64, STORAGE);
        let words = buffer(ctx, "ggml blocks", (blocks * MAX_BLOCK_BYTES) as u64, STORAGE);
        let redo = buffer(ctx, "ggml redo flags", (blocks / 2 * 4) as u64, STORAGE);
        let staging = buffer(ctx, "ggml read-back", offsets(blocks).2, READBACK);
        let entries: Vec<wgpu::BindGroupEntry> =
            [&uniform, &input, &words, &redo].iter().enumerate().map(|(b, buf)| wgpu::BindGroupEntry { binding: b as u32, resource: buf.as_entire_binding() }).collect();
        let bind = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("ggml blocks"), layout, entries: &entries });
        Set { uniform, upload, input, words, redo, staging, bind, timer: Timer::new(ctx) }
    }
}

fn entry(binding: u32, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    }
}

impl GgmlKernels {
    pub fn new(ctx: &GpuContext, caps: &Caps) -> Self {
        let storage = |read_only| wgpu::BufferBindingType::Storage { read_only };
        let layout = ctx.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("ggml blocks"),
            entries: &[entry(0, wgpu::BufferBindingType::Uniform), entry(1, storage(true)), entry(2, storage(false)), entry(3, storage(false))],
        });
        // Whole pairs of blocks, as many as the min/max kernel's chunk holds elements.
        let blocks = (caps.elems / QK / 2 * 2).max(2);
        Self { layout, pipelines: Mutex::new(HashMap::new()), sets: Mutex::new(None), blocks }
    }

    /// The pipeline for `ty`, built on first use (`Err(why)` if this adapter cannot build it).
    fn pipeline(&self, ctx: &GpuContext, ty: GgmlType) -> std::result::Result<wgpu::ComputePipeline, String> {
        let mut p = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        p.entry(ty)
            .or_insert_with(|| {
                ctx.exact_f32_pipeline(&format!("ggml {ty}"), &super::shaders::ggml_source(family(ty)), "quantize_blocks", &[("TYPE", ty.id() as f64)], &self.layout)
            })
            .clone()
    }

    /// Encodes `x` (whole blocks of `ty`, one of [`TYPES`]) into `out` on the GPU, with the
    /// CPU reference for flagged pairs. The caller has checked the adapter (`verdict`).
    pub fn run(&self, ctx: &GpuContext, ty: GgmlType, x: &[f32], out: &mut [u8], timed: bool) -> Result<Stages> {
        let pipeline = self.pipeline(ctx, ty).map_err(QuantError::Unsupported)?;
        let (_, bytes) = ty.block();
        let n_blocks = x.len() / QK;
        let (redo_at, time_at, len) = offsets(self.blocks);
        let mut guard = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        let sets = guard.get_or_insert_with(|| [0, 1].map(|_| Set::new(ctx, &self.layout, self.blocks)));
        let mut stages = Stages { kernel: (timed && ctx.timestamps).then_some(0.0), ..Stages::default() };
        let chunks: Vec<(usize, usize)> = (0..n_blocks).step_by(self.blocks).map(|b0| (b0, (b0 + self.blocks).min(n_blocks))).collect();
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let result = (|| -> Result<()> {
            let finish = |f: InFlight, out: &mut [u8], stages: &mut Stages| -> Result<()> {
                let waiting = Instant::now();
                staging::wait_mapped(ctx, &f)?;
                stages.wait += waiting.elapsed().as_secs_f64();
                let reading = Instant::now();
                let set = &sets[f.set];
                let (b0, b1) = chunks[f.chunk];
                {
                    let view = set.staging.slice(..len).get_mapped_range().map_err(|e| QuantError::Device(format!("mapping the read-back buffer failed: {e}")))?;
                    out[b0 * bytes..b1 * bytes].copy_from_slice(&view[..(b1 - b0) * bytes]);
                    let flags: &[u32] = bytemuck::cast_slice(&view[redo_at as usize..redo_at as usize + (b1 - b0).div_ceil(2) * 4]);
                    for (p, _) in flags.iter().enumerate().filter(|(_, &f)| f != 0) {
                        let (c0, c1) = (b0 + 2 * p, (b0 + 2 * p + 2).min(b1));
                        ggml::quantize_with(Simd::Scalar, ty, &x[c0 * QK..c1 * QK], QK, None, &mut out[c0 * bytes..c1 * bytes])?;
                    }
                    if let Some(k) = stages.kernel.as_mut() {
                        *k += Timer::seconds(ctx, &view[time_at as usize..time_at as usize + 16]);
                    }
                }
                set.staging.unmap();
                stages.read += reading.elapsed().as_secs_f64();
                Ok(())
            };
            for (ci, &(b0, b1)) in chunks.iter().enumerate() {
                let si = ci % 2;
                if inflight.len() == 2 {
                    finish(inflight.pop_front().expect("a set in flight"), out, &mut stages)?;
                }
                let set = &sets[si];
                let pairs = (b1 - b0).div_ceil(2);
                ctx.queue.write_buffer(&set.uniform, 0, bytemuck::bytes_of(&Uniforms { n_segs: (b1 - b0) as u32, n_units: pairs as u32, zero_mask: 0, pad: 0 }));
                let src: &[u8] = bytemuck::cast_slice(&x[b0 * QK..b1 * QK]);
                let filling = Instant::now();
                set.upload.fill(ctx, src.len(), |block, at| block.copy_from_slice(&src[at..at + block.len()]))?;
                stages.fill += filling.elapsed().as_secs_f64();
                let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ggml blocks") });
                enc.copy_buffer_to_buffer(&set.upload.buffer, 0, &set.input, 0, src.len() as u64);
                {
                    let timer = set.timer.as_ref().filter(|_| stages.kernel.is_some());
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("ggml blocks"), timestamp_writes: timer.map(Timer::writes) });
                    pass.set_pipeline(&pipeline);
                    pass.set_bind_group(0, &set.bind, &[]);
                    staging::dispatch(ctx, &mut pass, pairs);
                }
                enc.copy_buffer_to_buffer(&set.words, 0, &set.staging, 0, ((b1 - b0) * bytes).next_multiple_of(4) as u64);
                enc.copy_buffer_to_buffer(&set.redo, 0, &set.staging, redo_at, pairs as u64 * 4);
                if let (Some(t), Some(_)) = (&set.timer, stages.kernel) {
                    t.resolve(&mut enc, &set.staging, time_at);
                }
                inflight.push_back(staging::submit(ctx, enc, &set.staging, len, si, ci));
                set.upload.remap();
            }
            while let Some(f) = inflight.pop_front() {
                finish(f, out, &mut stages)?;
            }
            Ok(())
        })();
        if result.is_err() {
            *guard = None; // buffers may still be mapped or in use: rebuild next time
        }
        result.map(|_| stages)
    }
}

/// Rows that meet every hazard of the kernels: ties of `x*id + 8.5` and of `roundf`, signed
/// zeros, constant and all-zero blocks, subnormal values and subnormal f16 scales, blocks whose
/// inverse scale overflows (flagged), ranges and scales past f16 and f32, NaN and infinity.
pub fn self_test_input() -> Vec<f32> {
    let mut x = Vec::new();
    let mut h = 0x9e37_79b9u32;
    let mut next = || {
        h ^= h << 13;
        h ^= h >> 17;
        h ^= h << 5;
        h
    };
    let scales = [1.0f32, 0.02, 3.0e4, 1.0e6, 1.0e-6, 6.0e-5, 1.0e-38, 1.0e-43, 3.0e38];
    for &s in &scales {
        for _ in 0..4 {
            x.extend((0..QK).map(|_| ((next() >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * s));
        }
    }
    // Ties: integers and halves on the code grid of each type.
    x.extend((0..QK).map(|i| i as f32 - 16.0));
    x.extend((0..QK).map(|i| (i as f32 - 16.0) * 0.5));
    x.extend((0..QK).map(|i| (i % 16) as f32 * 127.0 / 15.0));
    x.extend((0..QK).map(|i| if i % 2 == 0 { 0.0 } else { -0.0 }));
    x.extend([-0.0f32; QK]);
    x.extend([0.75f32; QK]);
    x.extend((0..QK).map(|i| f32::from_bits(1 + i as u32 * 977)));
    x.extend((0..QK).map(|i| if i == 5 { f32::MAX } else { -f32::MAX * (i as f32 / 32.0) }));
    x.extend((0..QK).map(|i| if i == 3 { f32::NAN } else { i as f32 }));
    x.extend((0..QK).map(|i| if i == 30 { f32::NEG_INFINITY } else { i as f32 }));
    x
}

/// The CPU's bytes of [`self_test_input`] for `ty`, against the kernel's: `Some(why)` if any
/// byte differs.
pub fn self_test(kernels: &GgmlKernels, ctx: &GpuContext, ty: GgmlType) -> Result<Option<String>> {
    let x = self_test_input();
    let n = ggml::check_rows(ty, x.len(), QK, None)?;
    let (mut got, mut want) = (vec![0u8; n], vec![0u8; n]);
    ggml::quantize_with(Simd::Scalar, ty, &x, QK, None, &mut want)?;
    kernels.run(ctx, ty, &x, &mut got, false)?;
    let (_, bytes) = ty.block();
    Ok(got.chunks(bytes).zip(want.chunks(bytes)).position(|(a, b)| a != b).map(|b| format!("the {ty} kernel's bytes differ from the CPU's in block {b} of its self-test")))
}
