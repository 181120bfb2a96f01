//! ggml's block types on the GPU: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (`shaders/ggml_legacy.wgsl`)
//! and the K-quants Q2_K, Q3_K, Q4_K, Q5_K and Q6_K (`shaders/ggml_kquants.wgsl`), with an
//! importance matrix and without, giving the bytes of [`crate::quant::ggml::quantize`] (which
//! are ggml's).
//!
//! With an importance matrix the call uploads its row once (binding 4) and, for the 32-element
//! types, each row's `sigma2` computed by the CPU's own code (`ggml::rows_sigma2`, binding 5;
//! the K-quants take theirs from the block itself); each chunk's uniforms carry its first block
//! in the call and the blocks per row, from which a block finds its column (its weights) and
//! its row (its sigma2), whatever row the chunk starts in. A flagged weighted unit is redone by
//! encoding its row(s) on the CPU.
//!
//! How each hazard is met (the shaders' headers say the same from their side):
//! * division: integer long division, correctly rounded (`div_rn`, shared with min/max);
//! * fused multiply-add: the product that feeds an addition passes through `opaque`, and so
//!   does a sum that meets a constant next (no reassociation); on Vulkan every float result
//!   also carries SPIR-V's `NoContraction` ([`super::spirv`]);
//! * square root (Q4_K, Q5_K): `sqrt_rn`, correctly rounded in integer arithmetic, checked on
//!   the adapter against `f32::sqrt` (tests below);
//! * subnormals: the kernel is built like lsq's ([`GpuContext::exact_f32_pipeline`]) and runs
//!   only where the subnormal probe passed and the kernel itself reproduced the CPU's bytes on
//!   [`self_test_rows`] (extreme, tiny, tied and subnormal blocks, and many ordinary ones);
//!   otherwise the type is refused on that adapter (`QuantError::Unsupported`);
//! * summation order: each sum runs inside one invocation in the reference's order: a
//!   32-element block's (a unit's) whole arithmetic; for the K-quants each sub-block's search
//!   in its own invocation ([`lanes`]) and the block's own steps in the first of them, after a
//!   barrier (the searches are independent in the reference too);
//! * infinities and NaNs, which WGSL leaves indeterminate: a block whose reference arithmetic
//!   would meet one (a non-finite input, a range or an inverse scale past f32, a K-quant block
//!   past the bound under which its searches cannot overflow, a weighted search whose sums
//!   could) is flagged, and the host encodes its unit with the CPU reference;
//! * llvmpipe's limit of about 65,535 loop iterations per invocation: one invocation encodes a
//!   32-element unit ([`unit_blocks`]: one block where a block is whole u32 words, else a
//!   pair, so that no output word has two writers) or one K sub-block; the heaviest, a weighted
//!   Q4_K/Q5_K sub-block, takes about 3,500 iterations.
//!
//! The input is staged through the same persistent mapped buffers as min/max ([`Upload`]), in
//! chunks of whole units of blocks of the type at hand, every type within the same buffers;
//! two buffer sets alternate, so chunk k+1 is filled and queued while chunk k runs.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use crate::error::{QuantError, Result};
use crate::quant::ggml::{self, GgmlType, Simd};

use super::context::GpuContext;
use super::plan::Caps;
use super::quantize::Stages;
use super::staging::{self, buffer, InFlight, Timer, Upload, READBACK, STORAGE};

/// Mirror of `struct GgmlUniforms` (ggml_common.wgsl): `Uniforms`' four words, then where the
/// chunk starts in the call and the row geometry for the importance matrix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GgmlUniforms {
    pub n_segs: u32,
    pub n_units: u32,
    pub zero_mask: u32,
    pub pad: u32,
    pub first_block: u32,
    pub blocks_per_row: u32,
    pub weighted: u32,
    pub pad2: u32,
}

/// The types with a GPU kernel (each with an importance matrix and without).
pub const TYPES: [GgmlType; 10] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];

/// The shader file with `ty`'s encoder (appended to `ggml_common.wgsl`).
fn family(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => super::shaders::GGML_KQUANTS,
        _ => super::shaders::GGML_LEGACY,
    }
}

/// Blocks per invocation (the kernels' unit, `UNIT`): one where a block is whole u32 words,
/// else a pair (two blocks of every type are), so that no output word has two writers.
pub fn unit_blocks(ty: GgmlType) -> usize {
    if ty.block().1.is_multiple_of(4) {
        1
    } else {
        2
    }
}

/// Invocations per unit: the K-quants run one per sub-block search (independent in ggml too),
/// eight per Q4_K/Q5_K block and sixteen per Q2_K/Q3_K/Q6_K block (entry point
/// `quantize_blocks_sub`); the 32-element types one per unit (`quantize_blocks`). One
/// invocation per K block kept an H200 mostly idle (Q4_K 7 GB/s, Q6_K 8).
fn lanes(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_K | GgmlType::Q5_K => 8,
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q6_K => 16 * unit_blocks(ty),
        _ => 1,
    }
}

fn entry_point(ty: GgmlType) -> &'static str {
    if lanes(ty) > 1 {
        "quantize_blocks_sub"
    } else {
        "quantize_blocks"
    }
}

/// Whole units of `ty`'s blocks in a chunk of `elems` values (at least one unit).
fn chunk_blocks(ty: GgmlType, elems: usize) -> usize {
    let unit = unit_blocks(ty);
    (elems / ty.block().0 / unit * unit).max(unit)
}

/// What a buffer set must hold for any of [`TYPES`] in chunks of `elems` values: (input bytes,
/// output bytes, units).
fn capacity(elems: usize) -> (usize, usize, usize) {
    TYPES.iter().fold((0, 0, 0), |(i, o, u), &ty| {
        let (qk, bytes) = ty.block();
        let b = chunk_blocks(ty, elems);
        (i.max(b * qk * 4), o.max(b * bytes), u.max(b / unit_blocks(ty)))
    })
}

/// The kernels' shared state: bind group layout, a pipeline per type (built on first use,
/// with its verdict), and the buffer sets.
pub struct GgmlKernels {
    layout: wgpu::BindGroupLayout,
    pipelines: Mutex<HashMap<GgmlType, std::result::Result<wgpu::ComputePipeline, String>>>,
    sets: Mutex<Option<[Set; 2]>>,
    /// Values per chunk (each type takes whole units of its blocks, [`chunk_blocks`]).
    elems: usize,
}

struct Set {
    uniform: wgpu::Buffer,
    upload: Upload,
    input: wgpu::Buffer,
    words: wgpu::Buffer,
    redo: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// Bound with 4-byte stand-ins for the importance matrix and the rows' sigma2.
    bind: wgpu::BindGroup,
    timer: Option<Timer>,
}

/// Offsets in a set's read-back buffer: the blocks' bytes, one redo flag per unit, timestamps.
fn offsets(elems: usize) -> (u64, u64, u64) {
    let (_, out, units) = capacity(elems);
    let redo = out.next_multiple_of(4) as u64;
    let time = redo + units as u64 * 4;
    (redo, time, time + 16)
}

impl Set {
    fn new(ctx: &GpuContext, layout: &wgpu::BindGroupLayout, elems: usize) -> Self {
        let (input_bytes, out_bytes, units) = capacity(elems);
        let uniform = buffer(ctx, "ggml uniforms", std::mem::size_of::<GgmlUniforms>() as u64, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST);
        let upload = Upload::new(ctx, "ggml weights upload", input_bytes as u64);
        let input = buffer(ctx, "ggml weights", input_bytes as u64, STORAGE);
        let words = buffer(ctx, "ggml blocks", out_bytes.next_multiple_of(4) as u64, STORAGE);
        let redo = buffer(ctx, "ggml redo flags", (units * 4) as u64, STORAGE);
        let staging = buffer(ctx, "ggml read-back", offsets(elems).2, READBACK);
        let none = buffer(ctx, "ggml no importance matrix", 4, STORAGE);
        let bind = bind(ctx, layout, [&uniform, &input, &words, &redo, &none, &none]);
        Set { uniform, upload, input, words, redo, staging, bind, timer: Timer::new(ctx) }
    }
}

fn bind(ctx: &GpuContext, layout: &wgpu::BindGroupLayout, buffers: [&wgpu::Buffer; 6]) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> =
        buffers.iter().enumerate().map(|(b, buf)| wgpu::BindGroupEntry { binding: b as u32, resource: buf.as_entire_binding() }).collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("ggml blocks"), layout, entries: &entries })
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
            entries: &[entry(0, wgpu::BufferBindingType::Uniform), entry(1, storage(true)), entry(2, storage(false)), entry(3, storage(false)), entry(4, storage(true)), entry(5, storage(true))],
        });
        // Chunks of as many values as the min/max kernel's, in whole units of blocks.
        Self { layout, pipelines: Mutex::new(HashMap::new()), sets: Mutex::new(None), elems: caps.elems }
    }

    /// The pipeline for `ty`, built on first use (`Err(why)` if this adapter cannot build it).
    fn pipeline(&self, ctx: &GpuContext, ty: GgmlType) -> std::result::Result<wgpu::ComputePipeline, String> {
        let mut p = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        p.entry(ty)
            .or_insert_with(|| {
                ctx.exact_f32_pipeline(&format!("ggml {ty}"), &super::shaders::ggml_source(family(ty)), entry_point(ty), &[("TYPE", ty.id() as f64), ("UNIT", unit_blocks(ty) as f64)], &self.layout)
            })
            .clone()
    }

    /// Encodes `x` (rows of `n_per_row`, whole blocks of `ty`, one of [`TYPES`]) into `out` on
    /// the GPU, weighted by `imatrix` (one weight per column) if given, with the CPU reference
    /// for flagged units. The caller has checked the rows and the adapter (`verdict`).
    #[allow(clippy::too_many_arguments)] // the arguments of ggml::quantize, and the device's
    pub fn run(&self, ctx: &GpuContext, ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>, out: &mut [u8], timed: bool) -> Result<Stages> {
        let pipeline = self.pipeline(ctx, ty).map_err(QuantError::Unsupported)?;
        let (qk, bytes) = ty.block();
        let n_blocks = x.len() / qk;
        let blocks_per_row = n_per_row / qk;
        let blocks = chunk_blocks(ty, self.elems);
        let unit = unit_blocks(ty);
        let (redo_at, time_at, len) = offsets(self.elems);
        // A matrix the type ignores (Q8_0) is neither uploaded nor read.
        let imatrix = imatrix.filter(|_| ty.uses_imatrix());
        // The rows' sigma2 (the 32-element types with an importance matrix) before the lock: it
        // runs on the thread pool, whose workers may be waiting for the sets.
        let sigma2: Vec<f32> = match imatrix {
            Some(_) if qk == 32 => ggml::rows_sigma2(x, n_per_row),
            _ => vec![0.0],
        };
        let mut guard = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        let sets = guard.get_or_insert_with(|| [0, 1].map(|_| Set::new(ctx, &self.layout, self.elems)));
        // With an importance matrix: its row and the rows' sigma2 (the CPU's own code, for the
        // 32-element types), uploaded once for the call and bound beside each set's buffers.
        let weighted: Option<[wgpu::BindGroup; 2]> = match imatrix {
            Some(w) => {
                let qw = buffer(ctx, "ggml importance matrix", (w.len() * 4) as u64, STORAGE);
                ctx.queue.write_buffer(&qw, 0, bytemuck::cast_slice(w));
                let sig = buffer(ctx, "ggml row sigma2", (sigma2.len() * 4) as u64, STORAGE);
                ctx.queue.write_buffer(&sig, 0, bytemuck::cast_slice(&sigma2));
                Some([0, 1].map(|s| bind(ctx, &self.layout, [&sets[s].uniform, &sets[s].input, &sets[s].words, &sets[s].redo, &qw, &sig])))
            }
            _ => None,
        };
        // The flagged units' blocks, redone on the CPU once the buffer sets are released: the CPU
        // encoder runs on the thread pool, whose workers may be waiting for these sets.
        let mut flagged: Vec<(usize, usize)> = Vec::new();
        let mut stages = Stages { kernel: (timed && ctx.timestamps).then_some(0.0), ..Stages::default() };
        let chunks: Vec<(usize, usize)> = (0..n_blocks).step_by(blocks).map(|b0| (b0, (b0 + blocks).min(n_blocks))).collect();
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let result = (|| -> Result<()> {
            let mut finish = |f: InFlight, out: &mut [u8], stages: &mut Stages| -> Result<()> {
                let waiting = Instant::now();
                staging::wait_mapped(ctx, &f)?;
                stages.wait += waiting.elapsed().as_secs_f64();
                let reading = Instant::now();
                let set = &sets[f.set];
                let (b0, b1) = chunks[f.chunk];
                {
                    let view = set.staging.slice(..len).get_mapped_range().map_err(|e| ctx.mapping_failed("mapping the read-back buffer", e))?;
                    out[b0 * bytes..b1 * bytes].copy_from_slice(&view[..(b1 - b0) * bytes]);
                    let flags: &[u32] = bytemuck::cast_slice(&view[redo_at as usize..redo_at as usize + (b1 - b0).div_ceil(unit) * 4]);
                    for (k, _) in flags.iter().enumerate().filter(|(_, &f)| f != 0) {
                        flagged.push((b0 + unit * k, (b0 + unit * (k + 1)).min(b1)));
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
                // With both sets in flight the older is this chunk's: read back while the
                // upload buffer is filled, free again before this chunk is submitted.
                let oldest = (inflight.len() == 2).then(|| inflight.pop_front().expect("a set in flight"));
                let set = &sets[si];
                let units = (b1 - b0).div_ceil(unit);
                let uniforms = GgmlUniforms {
                    n_segs: (b1 - b0) as u32,
                    n_units: units as u32,
                    first_block: b0 as u32,
                    blocks_per_row: blocks_per_row.max(1) as u32,
                    weighted: weighted.is_some() as u32,
                    ..GgmlUniforms::default()
                };
                let src: &[u8] = bytemuck::cast_slice(&x[b0 * qk..b1 * qk]);
                // The chunk's uniforms and commands are recorded while the fill threads copy
                // its values (as min/max's, `quantize::run`), and submitted after.
                let timed_kernel = stages.kernel.is_some();
                let encode = || {
                    ctx.queue.write_buffer(&set.uniform, 0, bytemuck::bytes_of(&uniforms));
                    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ggml blocks") });
                    enc.copy_buffer_to_buffer(&set.upload.buffer, 0, &set.input, 0, src.len() as u64);
                    {
                        let timer = set.timer.as_ref().filter(|_| timed_kernel);
                        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("ggml blocks"), timestamp_writes: timer.map(Timer::writes) });
                        pass.set_pipeline(&pipeline);
                        pass.set_bind_group(0, weighted.as_ref().map_or(&set.bind, |b| &b[si]), &[]);
                        staging::dispatch(ctx, &mut pass, units * lanes(ty));
                    }
                    enc.copy_buffer_to_buffer(&set.words, 0, &set.staging, 0, ((b1 - b0) * bytes).next_multiple_of(4) as u64);
                    enc.copy_buffer_to_buffer(&set.redo, 0, &set.staging, redo_at, units as u64 * 4);
                    if let (Some(t), true) = (&set.timer, timed_kernel) {
                        t.resolve(&mut enc, &set.staging, time_at);
                    }
                    enc
                };
                let encode_and_read_oldest = || {
                    let enc = encode();
                    oldest.map_or(Ok(()), |f| finish(f, out, &mut stages))?;
                    Ok(enc)
                };
                let (enc, took) = set.upload.fill(ctx, src.len(), |block, at| block.copy_from_slice(&src[at..at + block.len()]), encode_and_read_oldest)?;
                stages.fill += took.fill;
                stages.wait += took.wait;
                let f = staging::submit(ctx, enc, &set.staging, len, si, ci);
                set.upload.remap(f.index.clone());
                inflight.push_back(f);
            }
            while let Some(f) = inflight.pop_front() {
                finish(f, out, &mut stages)?;
            }
            Ok(())
        })();
        if result.is_err() {
            *guard = None; // buffers may still be mapped or in use: rebuild next time
        }
        drop(guard);
        result?;
        stages.redone = flagged.iter().map(|(c0, c1)| c1 - c0).sum();
        let blocks: Vec<usize> = flagged.into_iter().flat_map(|(c0, c1)| c0..c1).collect();
        redo_on_cpu(ty, x, n_per_row, imatrix, &blocks, out)?;
        Ok(stages)
    }
}

/// Encodes the flagged `blocks` (ascending block indices of `x`, rows of `n_per_row`) with the
/// CPU encoders into `out`, in one parallel call. Unweighted, a block depends only on itself:
/// the blocks are gathered as rows of one block. Weighted, a block also depends on its column's
/// weights and (the 32-element types) on its row's sigma2: its rows are gathered whole, encoded
/// with the importance matrix, and the flagged blocks' bytes copied out. (One block at a time
/// on one core would make a layer whose every block is flagged, say a column of importances
/// past the kernels' bound in every row, many times slower than the CPU path.)
fn redo_on_cpu(ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>, blocks: &[usize], out: &mut [u8]) -> Result<()> {
    if blocks.is_empty() {
        return Ok(());
    }
    let (qk, bytes) = ty.block();
    let (len, rows): (usize, Vec<usize>) = match imatrix {
        None => (qk, blocks.to_vec()),
        Some(_) => {
            let mut rows: Vec<usize> = blocks.iter().map(|&c| c * qk / n_per_row).collect();
            rows.dedup();
            (n_per_row, rows)
        }
    };
    let mut xs = Vec::with_capacity(rows.len() * len);
    for &r in &rows {
        xs.extend_from_slice(&x[r * len..(r + 1) * len]);
    }
    let mut encoded = vec![0u8; rows.len() * len / qk * bytes];
    ggml::quantize(ty, &xs, len, imatrix, &mut encoded)?;
    let per_row = len / qk;
    for &c in blocks {
        let r = rows.binary_search(&(c / per_row)).expect("every flagged block's row was gathered");
        let at = (r * per_row + c % per_row) * bytes;
        out[c * bytes..(c + 1) * bytes].copy_from_slice(&encoded[at..at + bytes]);
    }
    Ok(())
}

/// Rows that meet every hazard of the kernels: ties of `x*id + 8.5` and of `roundf`, signed
/// zeros, constant and all-zero blocks, subnormal values and subnormal f16 scales, blocks whose
/// inverse scale overflows (flagged), ranges and scales past f16 and f32, NaN and infinity.
pub fn self_test_input() -> Vec<f32> {
    const QK: usize = 32;
    let mut x = Vec::new();
    let mut next = xorshift(0x9e37_79b9);
    let scales = [1.0f32, 0.02, 3.0e4, 1.0e6, 1.0e-6, 6.0e-5, 1.0e-38, 1.0e-43, 3.0e38];
    for &s in &scales {
        for _ in 0..4 {
            x.extend((0..QK).map(|_| ((next() >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * s));
        }
    }
    // Many blocks of ordinary weights: a fused multiply-add (a compiler that saw through the
    // barriers) changes a code in about one weighted block in a hundred of these, not in the
    // crafted blocks (seen on an H200).
    x.extend((0..256 * QK).map(|_| ((next() >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.1));
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

fn xorshift(mut h: u32) -> impl FnMut() -> u32 {
    move || {
        h ^= h << 13;
        h ^= h >> 17;
        h ^= h << 5;
        h
    }
}

/// [`self_test_input`] for the K-quants' 256-element super-blocks: random blocks of many
/// magnitudes (up to the kernels' 2^16 bound and past it: flagged), all-zero, signed-zero and
/// constant blocks, zero and near-`GROUP_MAX_EPS` sub-blocks inside non-zero blocks, sub-blocks
/// whose scale rounds to 0 beside large ones, subnormal and tiny values, values on the code
/// grids and their ties, huge values (flagged), NaN and infinity.
pub fn self_test_input_k() -> Vec<f32> {
    const QK: usize = 256;
    let mut x = Vec::new();
    let mut next = xorshift(0x2545_f491);
    let mut unit = move || (next() >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
    let scales = [1.0f32, 0.02, 3.0e4, 65535.0, 1.3e5, 1.0e-6, 6.0e-5, 1.0e-12, 1.0e-20, 1.0e-38, 1.0e-43, 1.0e30, 3.0e38];
    for &s in &scales {
        for _ in 0..2 {
            x.extend((0..QK).map(|_| unit() * s));
        }
    }
    // Many blocks of ordinary weights (see `self_test_input`).
    x.extend((0..32 * QK).map(|_| unit() * 0.1));
    // Skewed blocks: all positive, all negative, one outlier.
    x.extend((0..QK).map(|_| unit() + 0.5));
    x.extend((0..QK).map(|_| -(unit() + 0.5) * 3.0));
    x.extend((0..QK).map(|i| if i == 77 { 40.0 } else { unit() * 0.01 }));
    // Sub-blocks of zeros (of 16 and of 32), of ±1e-15 (GROUP_MAX_EPS) and just below it, and
    // sub-blocks a thousandth and a millionth the size of the others.
    x.extend((0..QK).map(|i| if (i / 16) % 2 == 0 { 0.0 } else { unit() }));
    x.extend((0..QK).map(|i| if (i / 32) % 3 == 1 { 0.0 } else { unit() * 7.0 }));
    x.extend((0..QK).map(|i| match (i / 16) % 4 {
        0 => 1.0e-15,
        1 => -9.99e-16,
        2 => unit() * 2.0e-15,
        _ => unit(),
    }));
    x.extend((0..QK).map(|i| unit() * [1.0, 1.0e-3, 1.0e-6, 3.0][(i / 16) % 4]));
    x.extend((0..QK).map(|i| unit() * [1.0, 1.0e-3, 1.0e-6, 3.0][(i / 32) % 4]));
    // Constant and zero blocks.
    x.extend([0.0f32; QK]);
    x.extend([-0.0f32; QK]);
    x.extend((0..QK).map(|i| if i % 2 == 0 { 0.0 } else { -0.0 }));
    x.extend([0.75f32; QK]);
    x.extend([-3.0f32; QK]);
    x.extend((0..QK).map(|i| if i < 128 { 2.0 } else { -2.0 }));
    // The code grids and their ties.
    x.extend((0..QK).map(|i| (i % 64) as f32 - 32.0));
    x.extend((0..QK).map(|i| ((i % 64) as f32 - 32.0) * 0.5));
    x.extend((0..QK).map(|i| (i % 32) as f32));
    x.extend((0..QK).map(|i| (i % 16) as f32 + 0.5));
    x.extend((0..QK).map(|i| (i % 8) as f32 - 4.0));
    x.extend((0..QK).map(|i| (i % 4) as f32 * 1.5));
    // Tiny: subnormal patterns, subnormals beside normals.
    x.extend((0..QK).map(|i| f32::from_bits(1 + i as u32 * 977)));
    x.extend((0..QK).map(|i| f32::from_bits((i as u32 * 0x9e37) & 0x807f_ffff)));
    x.extend((0..QK).map(|i| if i % 3 == 0 { f32::from_bits(i as u32 + 1) } else { unit() * 1.0e-30 }));
    // Huge and non-finite: flagged, encoded by the CPU.
    x.extend((0..QK).map(|i| if i == 5 { f32::MAX } else { -f32::MAX * (i as f32 / 256.0) }));
    x.extend((0..QK).map(|i| if i == 200 { 1.0e30 } else { unit() }));
    x.extend((0..QK).map(|i| if i == 3 { f32::NAN } else { i as f32 }));
    x.extend((0..QK).map(|i| if i == 250 { f32::NEG_INFINITY } else { unit() }));
    x
}

/// The self-test rows for `ty`'s block size.
pub fn self_test_rows(ty: GgmlType) -> Vec<f32> {
    if ty.block().0 == 32 {
        self_test_input()
    } else {
        self_test_input_k()
    }
}

/// Blocks per row of the weighted self-test: odd, so that pairs straddle rows.
const SELF_TEST_ROW_BLOCKS: usize = 7;

/// The importance matrix of the weighted self-test, one weight per column of a row of
/// [`SELF_TEST_ROW_BLOCKS`] blocks of `qk`: a block of each kind, zeros (with a few tiny and
/// subnormal weights), random weights of many magnitudes, weights at the kernels' bound 2^15 and
/// just below it, one huge weight (1e30, flagged), tiny ones (1e-38 and subnormals), weights of
/// both signs (negative weights turn the searches' sums around), and large uniform weights
/// (2^14: with the large blocks of the input, the weighted searches' sums pass the bounds their
/// guards check).
pub fn self_test_imatrix(qk: usize) -> Vec<f32> {
    let mut next = xorshift(0x6a09_e667);
    let mut unit = move || (next() >> 8) as f32 / (1u32 << 24) as f32;
    let mut w = Vec::new();
    w.extend((0..qk).map(|i| if i % 7 == 3 { 1.0e-38 } else if i % 11 == 5 { f32::from_bits(3) } else { 0.0 }));
    w.extend((0..qk).map(|i| unit() * [1.0, 100.0, 1.0e-3, 3.0e4, 1.0e-20][i % 5]));
    w.extend((0..qk).map(|i| if i == 9 { 32768.0 } else if i % 2 == 0 { 32767.0 } else { unit() }));
    w.extend((0..qk).map(|i| if i == qk / 2 { 1.0e30 } else { unit() }));
    w.extend((0..qk).map(|i| if i % 3 == 0 { f32::from_bits(1 + i as u32) } else { unit() * 1.0e-38 }));
    w.extend((0..qk).map(|i| (unit() - 0.4) * [1.0, 50.0, 0.01][i % 3]));
    w.extend((0..qk).map(|_| 16384.0 * (0.5 + unit())));
    w
}

/// The CPU's bytes of [`self_test_rows`] for `ty` (with [`self_test_imatrix`] if `imatrix`),
/// against the kernel's: `Some(why)` if any byte differs.
pub fn self_test(kernels: &GgmlKernels, ctx: &GpuContext, ty: GgmlType, imatrix: bool) -> Result<Option<String>> {
    let mut x = self_test_rows(ty);
    let (qk, bytes) = ty.block();
    let (n_per_row, w) = if imatrix {
        // Whole rows: the first blocks again at the end.
        let mut k = 0;
        while !(x.len() / qk).is_multiple_of(SELF_TEST_ROW_BLOCKS) {
            x.extend_from_within(k * qk..(k + 1) * qk);
            k += 1;
        }
        (SELF_TEST_ROW_BLOCKS * qk, Some(self_test_imatrix(qk)))
    } else {
        (qk, None)
    };
    let n = ggml::check_rows(ty, x.len(), n_per_row, w.as_deref())?;
    let (mut got, mut want) = (vec![0u8; n], vec![0u8; n]);
    ggml::quantize_with(Simd::Scalar, ty, &x, n_per_row, w.as_deref(), &mut want)?;
    kernels.run(ctx, ty, &x, n_per_row, w.as_deref(), &mut got, false)?;
    let what = if imatrix { " with an importance matrix" } else { "" };
    Ok(got.chunks(bytes).zip(want.chunks(bytes)).position(|(a, b)| a != b).map(|b| format!("the {ty} kernel's bytes{what} differ from the CPU's in block {b} of its self-test")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sqrt_rn` of ggml_kquants.wgsl (Q4_K's and Q5_K's `sqrtf`) on this adapter against
    /// Rust's correctly rounded `f32::sqrt`, bit for bit: zeros, every subnormal scale, exact
    /// squares and their neighbours (where a wrong rounding shows first), powers of two, the
    /// largest floats and random bit patterns.
    #[test]
    fn the_kernels_square_root_is_correctly_rounded() {
        let backend = match crate::gpu::GpuBackend::shared() {
            Ok(b) => b,
            Err(e) if std::env::var("ARROW_QUANT_SKIP_GPU_TESTS").is_ok_and(|v| v == "1") => return eprintln!("skipping GPU test: {e}"),
            Err(e) => panic!("no GPU adapter for the GPU tests ({e}); set ARROW_QUANT_SKIP_GPU_TESTS=1 to skip"),
        };
        let ctx = backend.ctx;
        let mut x: Vec<u32> = vec![0, 1, 2, 3, 0x007f_ffff, 0x0080_0000, 0x7f7f_ffff, 0x7f7f_fffe, 0x3f80_0000, 0x4000_0000];
        x.extend((0..23).map(|k| 1u32 << k));
        for m in 1u32..2000 {
            for e in [-140i32, -75, -1, 0, 1, 20, 63] {
                let sq = (m as f32 * 2f32.powi(e)).powi(2).to_bits();
                if sq != 0 && sq < 0x7f80_0000 {
                    x.extend([sq - 1, sq, sq + 1]);
                }
            }
        }
        let mut next = xorshift(0x1234_5678);
        x.extend((0..150_000).map(|_| next() & 0x7fff_ffff).filter(|&b| b < 0x7f80_0000));
        x.extend((0..20_000).map(|_| next() & 0x00ff_ffff));
        let kernels = GgmlKernels::new(ctx, &backend.caps);
        let (input_bytes, out_bytes, _) = capacity(kernels.elems);
        let per_run = input_bytes.min(out_bytes) / 4;
        let pipeline = ctx.exact_f32_pipeline("sqrt check", &super::super::shaders::ggml_source(super::super::shaders::GGML_KQUANTS), "sqrt_check", &[("TYPE", 12.0), ("UNIT", 1.0)], &kernels.layout).unwrap();
        let set = Set::new(ctx, &kernels.layout, kernels.elems);
        for part in x.chunks(per_run) {
            ctx.queue.write_buffer(&set.uniform, 0, bytemuck::bytes_of(&GgmlUniforms { n_units: part.len() as u32, ..GgmlUniforms::default() }));
            ctx.queue.write_buffer(&set.input, 0, bytemuck::cast_slice(part));
            let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("sqrt check") });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("sqrt check"), timestamp_writes: None });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &set.bind, &[]);
                staging::dispatch(ctx, &mut pass, part.len());
            }
            let len = (part.len() * 4) as u64;
            enc.copy_buffer_to_buffer(&set.words, 0, &set.staging, 0, len);
            let f = staging::submit(ctx, enc, &set.staging, len, 0, 0);
            staging::wait_mapped(ctx, &f).unwrap();
            {
                let view = set.staging.slice(..len).get_mapped_range().unwrap();
                let got: &[u32] = bytemuck::cast_slice(&view);
                for (&b, &g) in part.iter().zip(got) {
                    let want = f32::from_bits(b).sqrt().to_bits();
                    assert_eq!(g, want, "sqrt_rn({b:#010x} = {:e}): {g:#010x}, f32::sqrt gives {want:#010x}", f32::from_bits(b));
                }
            }
            set.staging.unmap();
        }
    }
}
