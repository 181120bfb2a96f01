//! Choosing a backend from the `device` option ("cpu", "gpu", "auto").

use std::str::FromStr;

use crate::backend::Backend;
use crate::cpu::CpuBackend;
use crate::error::{QuantError, Result};

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

/// The backend for `device`. "cpu" never touches the GPU stack.
pub fn backend(device: Device) -> Result<&'static dyn Backend> {
    match device {
        Device::Cpu | Device::Auto => Ok(&CPU),
        Device::Gpu => Err(QuantError::Device(
            "device='gpu' is not available yet: this build has no GPU backend; use device='cpu' or 'auto'".into(),
        )),
    }
}
