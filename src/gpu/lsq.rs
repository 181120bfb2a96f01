//! `method="lsq"` on the GPU: whether this adapter can run it exactly.
//!
//! The lsq kernel (`shaders/lsq.wgsl`) does the definition's own `f32` arithmetic
//! ([`crate::quant::lsq`]) with plain `+ - *` in its order, which is exact only where the
//! device keeps subnormal operands and results (IEEE-754 gradual underflow): WGSL allows a device
//! to flush them to zero. A least-squares fit over values near 1e-38 meets subnormals, so an
//! adapter that flushes would give other bytes than the CPU. [`probe_subnormals`] runs once per
//! device and the backend refuses lsq where it fails.

use crate::error::{QuantError, Result};

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
    let module = d.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some("subnormal probe"), source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/subnormal_probe.wgsl").into()) });
    let pipeline = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("subnormal probe"),
        layout: None,
        module: &module,
        entry_point: Some("probe"),
        compilation_options: Default::default(),
        cache: None,
    });
    let io = buffer(ctx, "subnormal probe", 64, STORAGE);
    let back = buffer(ctx, "subnormal probe read-back", 64, READBACK);
    let mut init = [0u32; 16];
    init[..8].copy_from_slice(&INPUTS);
    ctx.queue.write_buffer(&io, 0, bytemuck::cast_slice(&init));
    let bind = d.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("subnormal probe"),
        layout: &pipeline.get_bind_group_layout(0),
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
        let view = back.slice(..64).get_mapped_range().map_err(|e| QuantError::Device(format!("mapping the probe's read-back failed: {e}")))?;
        bytemuck::cast_slice::<u8, u32>(&view)[8..12].to_vec()
    };
    back.unmap();
    Ok((got != WANT).then(|| format!("got {got:08x?}, IEEE-754 gives {WANT:08x?}")))
}
