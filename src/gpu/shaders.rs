//! WGSL sources. `common.wgsl` holds the shared helpers (the twin of `softfloat.rs`); each pass
//! file is appended to it, since WGSL has no includes (quantize also takes `lsq.wgsl`, the twin
//! of `quant/lsq.rs`).

pub const COMMON: &str = include_str!("../../shaders/common.wgsl");
pub const QUANTIZE: &str = include_str!("../../shaders/quantize.wgsl");
pub const LSQ: &str = include_str!("../../shaders/lsq.wgsl");
pub const DEQUANTIZE: &str = include_str!("../../shaders/dequantize.wgsl");
pub const GGML_COMMON: &str = include_str!("../../shaders/ggml_common.wgsl");
pub const GGML_LEGACY: &str = include_str!("../../shaders/ggml_legacy.wgsl");
pub const GGML_KQUANTS: &str = include_str!("../../shaders/ggml_kquants.wgsl");

pub fn quantize_source() -> String {
    format!("{COMMON}\n{LSQ}\n{QUANTIZE}")
}

pub fn dequantize_source() -> String {
    format!("{COMMON}\n{DEQUANTIZE}")
}

/// A ggml block kernel: the shared part, then one family's encoders (`GGML_LEGACY`, `GGML_KQUANTS`).
pub fn ggml_source(family: &str) -> String {
    format!("{COMMON}\n{GGML_COMMON}\n{family}")
}

#[cfg(test)]
mod tests {
    /// Parses and validates every shader with naga, with no adapter needed.
    #[test]
    fn shaders_validate_with_naga() {
        for (name, src) in [("quantize", super::quantize_source()), ("dequantize", super::dequantize_source()), ("ggml legacy", super::ggml_source(super::GGML_LEGACY)), ("ggml kquants", super::ggml_source(super::GGML_KQUANTS))] {
            let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }

    /// The tile constants agree with `plan`, and the fused kernel's workgroup memory fits the
    /// 16 KiB that WebGPU guarantees (and lavapipe gives).
    #[test]
    fn quantize_tile_matches_plan_and_fits_16_kib() {
        use crate::gpu::plan::{Tile, TILE_ELEMS, TILE_GROUPS};
        let src = super::quantize_source();
        assert!(src.contains(&format!("const TILE_ELEMS: u32 = {TILE_ELEMS}u;")));
        assert!(src.contains(&format!("const TILE_GROUPS: u32 = {TILE_GROUPS}u;")));
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        let bytes: u32 = module
            .global_variables
            .iter()
            .filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup)
            .map(|(_, v)| module.types[v.ty].inner.size(module.to_ctx()))
            .sum();
        assert!(bytes <= 16384, "{bytes} bytes of workgroup memory");
        let tile = module.types.iter().find(|(_, t)| t.name.as_deref() == Some("Tile")).unwrap().1;
        assert_eq!(tile.inner.size(module.to_ctx()) as usize, std::mem::size_of::<Tile>());
    }
}
