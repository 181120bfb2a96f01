//! `method="lsq"` on the GPU: whether this adapter can run it exactly.
//!
//! The lsq kernel (`shaders/lsq.wgsl`) does the definition's own `f32` arithmetic
//! ([`crate::quant::lsq`]) with plain `+ - *` in its order, which is exact only where the
//! device keeps subnormal operands and results (IEEE-754 gradual underflow): WGSL allows a device
//! to flush them to zero. A least-squares fit over values near 1e-38 meets subnormals, so an
//! adapter that flushes would give other bytes than the CPU. [`probe_subnormals`] runs once per
//! device, then the lsq kernel itself quantizes [`self_test_layer`] (checked against the
//! reference), and the backend refuses lsq where either fails.

use crate::error::Result;

use super::context::GpuContext;
use super::staging::{self, buffer, READBACK, STORAGE};

/// Operands of `shaders/subnormal_probe.wgsl` (bits) and the results IEEE-754 gives.
const INPUTS: [u32; 8] = [
    0x0000_0200, 0x3f80_0000, // 2^-140 × 1 = 2^-140
    0x0080_0000, 0x0040_0000, // 2^-126 − 2^-127 = 2^-127
    0x0001_16c2, 0x0000_0000, // 1e-40 + 0 = 1e-40
    0x1c80_0000, 0x1c80_0000, // 2^-70 × 2^-70 = 2^-140
];
const WANT: [u32; 4] = [0x0000_0200, 0x0040_0000, 0x0001_16c2, 0x0000_0200];

/// `Ok(None)` when the adapter computes every probe exactly, `Ok(Some(what it gave))` when it
/// flushes (or otherwise changes) a subnormal.
pub fn probe_subnormals(ctx: &GpuContext) -> Result<Option<String>> {
    let d = &ctx.device;
    let layout = d.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("subnormal probe"),
        entries: &[wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Storage { read_only: false }, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        }],
    });
    // Built as the lsq kernel is, so the probe sees what the kernel will get.
    let pipeline = match ctx.exact_f32_pipeline("subnormal probe", include_str!("../../shaders/subnormal_probe.wgsl"), "probe", &[], &layout) {
        Ok(p) => p,
        Err(e) => return Ok(Some(e)),
    };
    let io = buffer(ctx, "subnormal probe", 64, STORAGE);
    let back = buffer(ctx, "subnormal probe read-back", 64, READBACK);
    let mut init = [0u32; 16];
    init[..8].copy_from_slice(&INPUTS);
    ctx.queue.write_buffer(&io, 0, bytemuck::cast_slice(&init));
    let bind = d.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("subnormal probe"),
        layout: &layout,
        entries: &[wgpu::BindGroupEntry { binding: 0, resource: io.as_entire_binding() }],
    });
    let mut enc = d.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("subnormal probe") });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("subnormal probe"), timestamp_writes: None });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    enc.copy_buffer_to_buffer(&io, 0, &back, 0, 64);
    let f = staging::submit(ctx, enc, &back, 64, 0, 0);
    staging::wait_mapped(ctx, &f)?;
    let got: Vec<u32> = {
        let view = back.slice(..64).get_mapped_range().map_err(|e| ctx.mapping_failed("mapping the probe's read-back", e))?;
        bytemuck::cast_slice::<u8, u32>(&view)[8..12].to_vec()
    };
    back.unmap();
    Ok((got != WANT).then(|| format!("got {got:08x?}, IEEE-754 gives {WANT:08x?}")))
}

/// A small lsq layer that a device flushing subnormals gets wrong, with ordinary, two-value and
/// huge groups besides: what the backend's self-test of the lsq kernel quantizes.
/// Deterministic. Values near 1e-19 have errors whose squares are subnormal (the sse that picks
/// the grid); groups about 6e-38 wide have a subnormal scale and subnormal `w − zero` (the
/// codes). Below about 4e-38 a group is constant (`L / width` overflows) and above about 1e-22
/// no square is subnormal, so neither would tell.
pub fn self_test_layer() -> (Vec<f32>, crate::quant::GroupLayout) {
    use crate::quant::{BitWidth, GroupLayout, Method, QuantConfig};
    let layout = GroupLayout { method: Method::Lsq, ..GroupLayout::new(8, 96, QuantConfig::new(BitWidth::B4, 32).expect("a valid config")) };
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut unit = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let weights = (0..layout.n_elements())
        .map(|i| match (i / 32) % 6 {
            0 => unit() * 0.05,
            1 => unit() * 1e-19,
            2 => unit() * 6e-38,
            3 => if unit() < 0.0 { 0.25 } else { -0.75 },
            4 => unit() * 3e-20,
            _ => unit() * 1e30,
        })
        .collect();
    (weights, layout)
}

#[cfg(test)]
mod tests {
    use crate::quant::reference;

    fn quantize(w: &[f32], l: &crate::quant::GroupLayout) -> (Vec<u8>, Vec<u32>, Vec<u32>) {
        let (mut p, mut s, mut z) = (vec![0u8; l.packed_len()], vec![0f32; l.n_groups()], vec![0f32; l.n_groups()]);
        reference::quantize_layer("t", w, l, &mut p, &mut s, &mut z).unwrap();
        (p, s.iter().map(|x| x.to_bits()).collect(), z.iter().map(|x| x.to_bits()).collect())
    }

    /// The self-test catches a device that flushes subnormals: the reference itself, run with
    /// the x86 flush-to-zero and denormals-are-zero modes on, gives other bytes on its layer.
    #[cfg(target_arch = "x86_64")]
    #[test]
    #[allow(deprecated)]
    fn the_self_test_layer_tells_a_flushing_device() {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        let (w, l) = super::self_test_layer();
        let exact = quantize(&w, &l);
        let flushed = std::thread::spawn(move || {
            // SAFETY: sets this thread's FTZ (bit 15) and DAZ (bit 6) flags; the thread ends here.
            unsafe { _mm_setcsr(_mm_getcsr() | 0x8040) };
            quantize(&w, &l)
        })
        .join()
        .unwrap();
        // Both the codes and the grids chosen (scales) change.
        assert_ne!(exact.0, flushed.0);
        assert_ne!(exact.1, flushed.1);
    }
}
