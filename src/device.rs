//! Choosing a backend from the `device` option ("cpu", "gpu", "auto").

use std::str::FromStr;

use crate::backend::Backend;
use crate::cpu::CpuBackend;
use crate::error::{QuantError, Result};
#[cfg(feature = "gpu")]
use crate::gpu::GpuBackend;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    Cpu,
    Gpu,
    #[default]
    Auto,
}

impl FromStr for Device {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            "auto" => Ok(Self::Auto),
            _ => Err(QuantError::value(format!("Invalid device: '{s}'. Must be 'cpu', 'gpu', or 'auto'"))),
        }
    }
}

static CPU: CpuBackend = CpuBackend::new();

/// The backend for `device`.
///
/// * "cpu": the CPU backend; never initializes wgpu.
/// * "gpu": the best wgpu adapter, software adapters (lavapipe/llvmpipe) included; without any
///   adapter, a [`QuantError::Device`] that lists what was found.
/// * "auto": a hardware GPU when one is present, else the CPU backend. A software adapter
///   (wgpu device type `Cpu`) is only taken when the environment variable
///   `ARROW_QUANT_ALLOW_SOFTWARE_GPU=1` is set ([`crate::gpu::ALLOW_SOFTWARE_ENV`]); if the GPU
///   cannot be set up, "auto" also falls back to the CPU.
///
/// The GPU instance, device and pipelines are created once per process and reused. Both
/// backends produce the same bytes. In a child forked after its parent started the GPU, "auto"
/// is the CPU and "gpu" an error (see [`crate::gpu::inherited_from_parent`]).
pub fn backend(device: Device) -> Result<&'static dyn Backend> {
    match device {
        Device::Cpu => Ok(&CPU),
        Device::Gpu => gpu(),
        Device::Auto => {
            if auto_wants_gpu() {
                if let Ok(b) = gpu() {
                    return Ok(b);
                }
            }
            Ok(&CPU)
        }
    }
}

#[cfg(feature = "gpu")]
fn auto_wants_gpu() -> bool {
    !crate::gpu::inherited_from_parent() && crate::gpu::auto_wants_gpu()
}

#[cfg(feature = "gpu")]
fn gpu() -> Result<&'static dyn Backend> {
    if crate::gpu::inherited_from_parent() {
        return Err(QuantError::Device(
            "device='gpu': this process was forked after its parent had started the GPU, and a forked child cannot use \
             the parent's GPU context; use device='cpu' (or 'auto') in the child, or start workers with the 'spawn' method"
                .into(),
        ));
    }
    Ok(GpuBackend::shared()?)
}

#[cfg(not(feature = "gpu"))]
fn auto_wants_gpu() -> bool {
    false
}

#[cfg(not(feature = "gpu"))]
fn gpu() -> Result<&'static dyn Backend> {
    Err(QuantError::Device("device='gpu': this build of arrow_quant_v2 has no GPU support (built without the 'gpu' feature)".into()))
}
