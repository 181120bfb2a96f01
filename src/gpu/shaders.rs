//! WGSL sources. `common.wgsl` holds the shared helpers (the twin of `softfloat.rs`); each pass
//! file is appended to it, since WGSL has no includes.

pub const COMMON: &str = include_str!("../../shaders/common.wgsl");
pub const QUANTIZE: &str = include_str!("../../shaders/quantize.wgsl");
pub const DEQUANTIZE: &str = include_str!("../../shaders/dequantize.wgsl");

pub fn quantize_source() -> String {
    format!("{COMMON}\n{QUANTIZE}")
}

pub fn dequantize_source() -> String {
    format!("{COMMON}\n{DEQUANTIZE}")
}

#[cfg(test)]
mod tests {
    /// Parses and validates every shader with naga, with no adapter needed.
    #[test]
    fn shaders_validate_with_naga() {
        for (name, src) in [("quantize", super::quantize_source()), ("dequantize", super::dequantize_source())] {
            let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }
}
