//! `device="auto"` starts no GPU for work too small for one: in a process of its own, since any
//! other test may start wgpu. What it runs instead is the CPU's own path, with the same bytes
//! and statistics.

use arrow_quant_v2::backend::{Backend, DequantJob, MeasuredJob, QuantJob};
use arrow_quant_v2::cpu::CpuBackend;
use arrow_quant_v2::device::{auto_ggml_min_elements, backend, Device, GgmlDevice};
use arrow_quant_v2::model::gguf_out;
use arrow_quant_v2::quant::ggml::{self, GgmlType};
use arrow_quant_v2::gpu::started;
use arrow_quant_v2::{BitWidth, GroupLayout, Method, QuantConfig, Values};

/// Packed bytes, scale and zero-point bits and the six statistics of `quantize_measured`.
type Measured = (Vec<u8>, Vec<u32>, Vec<u32>, [u64; 6]);

fn weights(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect()
}

fn layout(n: usize, method: Method) -> GroupLayout {
    GroupLayout::new(n / 512, 512, QuantConfig::new(BitWidth::B4, 64).unwrap().with_method(method))
}

fn measured(b: &dyn Backend, w: &[f32], layout: GroupLayout) -> Measured {
    let (mut p, mut s, mut z) = (vec![0u8; layout.packed_len()], vec![0f32; layout.n_groups()], vec![0f32; layout.n_groups()]);
    let st = b.quantize_measured(&mut MeasuredJob { name: "w", values: Values::F32(w), layout, packed: &mut p, scales: &mut s, zero_points: &mut z }).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect();
    (p.clone(), bits(&s), bits(&z), [st.n as u64, st.max_abs_error.to_bits(), st.sum_sq_error.to_bits(), st.sum_sq_signal.to_bits(), st.dot.to_bits(), st.sum_sq_recon.to_bits()])
}

#[test]
fn auto_starts_no_gpu_for_small_calls() {
    let auto = backend(Device::Auto).unwrap();
    let cpu = CpuBackend::new();
    let n = 4096;
    let w = weights(n);
    for method in [Method::MinMax, Method::Lsq] {
        let l = layout(n, method);
        let (mut p, mut s, mut z) = (vec![0u8; l.packed_len()], vec![0f32; l.n_groups()], vec![0f32; l.n_groups()]);
        auto.quantize(&mut [QuantJob { name: "w", weights: &w, layout: l, packed: &mut p, scales: &mut s, zero_points: &mut z }]).unwrap();
        let dequantize = |b: &dyn Backend| {
            let mut out = vec![0f32; n];
            b.dequantize(&mut [DequantJob { name: "w", layout: l, packed: &p, scales: &s, zero_points: &z, out: &mut out }]).unwrap();
            out.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
        };
        assert_eq!(dequantize(auto), dequantize(&cpu), "{method:?}: dequantized");
        let m = measured(auto, &w, l);
        assert_eq!(m, measured(&cpu, &w, l), "{method:?}");
        assert_eq!((&m.0, &m.1, &m.2), (&p, &s.iter().map(|x| x.to_bits()).collect(), &z.iter().map(|x| x.to_bits()).collect()));
        assert!(!started(), "a {n}-value {method:?} call under \"auto\" started wgpu");
    }
    // ggml's block types likewise: a tensor smaller than the type's probe, through the GGUF
    // path's device and through the converter's encoder, is the CPU's bytes, undecided.
    let ggml_auto = GgmlDevice::new(Device::Auto).unwrap();
    for ty in [GgmlType::Q4_K, GgmlType::Q8_0] {
        let n = auto_ggml_min_elements(ty) - 4096;
        let x = weights(n);
        let mut want = vec![0u8; ggml::check_rows(ty, n, 4096, None).unwrap()];
        ggml::quantize(ty, &x, 4096, None, &mut want).unwrap();
        let mut got = vec![0u8; want.len()];
        ggml_auto.quantize(ty, &x, 4096, None, &mut got).unwrap();
        assert!(got == want, "{ty}: bytes");
        let encoded = gguf_out::encode("w", ty, Values::F32(&x), &[n / 4096, 4096], None, ggml_auto).unwrap();
        assert!(encoded.data == want, "{ty}: the converter's bytes");
        assert!(!started(), "a {n}-value {ty} tensor under \"auto\" started wgpu");
    }
    // A call large enough for the GPU to pay asks where to run (and looks for adapters to
    // decide); wherever it runs, the result is the CPU's.
    let n = 1 << 20;
    let (w, l) = (weights(n), layout(n, Method::MinMax));
    assert_eq!(measured(auto, &w, l), measured(&cpu, &w, l));
    assert!(started(), "a call of 2^20 values under \"auto\" never looked for a GPU");
}
