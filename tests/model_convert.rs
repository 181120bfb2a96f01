//! Whole-model conversion: GGUF and Arrow outputs read back, keep rules, min_cosine, and
//! atomic writes.

mod model_common;

use arrow_quant_v2::gguf::reader::GgufFile;
use arrow_quant_v2::gguf::mix::FileType;
use arrow_quant_v2::gguf::{GgmlType, MetaValue};
use arrow_quant_v2::model::quantized::QuantFile;
use arrow_quant_v2::model::{convert, NoProgress, Options, QuantType};
use arrow_quant_v2::quant::metrics::ErrorStats;
use model_common::*;
use safetensors::Dtype;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let mut s = ErrorStats::default();
    s.add(a, b);
    s.cosine()
}

#[test]
fn gguf_output_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.safetensors");
    let model = small_model();
    write(&src, &model);
    for (qt, ty, min_cos) in [(FileType::Q4_0, GgmlType::Q4_0, 0.98), (FileType::Q4_1, GgmlType::Q4_1, 0.98), (FileType::Q8_0, GgmlType::Q8_0, 0.9999)] {
        let dst = dir.path().join("m.gguf");
        let opts = Options { qtype: Some(QuantType::Gguf(qt)), keep: vec!["proj.*".into()], ..Options::default() };
        let reports = convert(&src, &dst, &opts, &mut NoProgress).unwrap();
        assert_eq!(reports.len(), model.len());
        let g = GgufFile::open(&dst).unwrap();
        assert_eq!(g.get("general.alignment"), Some(&MetaValue::U32(32)));
        assert!(matches!(g.get("general.architecture"), Some(MetaValue::Str(_))));
        let q = QuantFile::open(&dst).unwrap();
        for (i, t) in g.tensors.iter().enumerate() {
            let m = model.iter().find(|m| m.name == t.name).unwrap();
            assert_eq!(t.shape, m.shape);
            let want = match t.name.as_str() {
                "conv.weight" => GgmlType::F16,         // rows of 3
                "conv.bias" | "norm.weight" => GgmlType::F32, // 1-D
                "tiny.weight" => GgmlType::F16,          // 256 elements
                "proj.weight" => GgmlType::F16,          // --keep
                _ => ty,
            };
            assert_eq!(t.ty, want, "{}", t.name);
            assert_eq!(t.start % 32, 0);
            let back = q.decode(i).unwrap();
            let c = cosine(&m.values, &back);
            assert!(c > min_cos, "{} {:?}: cosine {c}", t.name, t.ty);
            let r = reports.iter().find(|r| r.name == t.name).unwrap();
            assert!((r.stats.cosine() - c).abs() < 1e-3 || m.dtype != Dtype::F32, "report {} vs {c}", r.stats.cosine());
        }
    }
}

#[test]
fn arrow_output_reads_back_and_min_cosine_picks_bits() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.safetensors");
    let model = small_model();
    write(&src, &model);
    let dst = dir.path().join("m.arrow");
    let opts = Options { quantize: vec!["norm.weight".into()], ..Options::default() };
    let reports = convert(&src, &dst, &opts, &mut NoProgress).unwrap();
    let q = QuantFile::open(&dst).unwrap();
    for (i, e) in q.entries().iter().enumerate() {
        let m = model.iter().find(|m| m.name == e.name).unwrap();
        let expect = match e.name.as_str() {
            "conv.weight" | "tiny.weight" => "F16",
            "conv.bias" => "F32",
            _ => "affine",
        };
        assert_eq!(e.format, expect, "{}", e.name);
        let c = cosine(&m.values, &q.decode(i).unwrap());
        assert!(c > 0.98, "{}: {c}", e.name);
    }
    assert!(reports.iter().all(|r| r.stats.cosine() > 0.98));

    let opts = Options { min_cosine: Some(0.9995), ..Options::default() };
    let reports = convert(&src, &dst, &opts, &mut NoProgress).unwrap();
    let proj = reports.iter().find(|r| r.name == "proj.weight").unwrap();
    assert_eq!(proj.bit_width, 8, "uniform values need 8 bits for cosine 0.9995");
    let opts = Options { min_cosine: Some(0.5), ..Options::default() };
    let reports = convert(&src, &dst, &opts, &mut NoProgress).unwrap();
    assert_eq!(reports.iter().find(|r| r.name == "proj.weight").unwrap().bit_width, 2);
}

#[test]
fn failed_conversion_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.safetensors");
    let mut model = small_model();
    model[3].values[100] = f32::NAN;
    write(&src, &model);
    for (name, qt) in [("out.gguf", QuantType::Gguf(FileType::Q4_0)), ("out.arrow", QuantType::Affine)] {
        let dst = dir.path().join(name);
        let e = convert(&src, &dst, &Options { qtype: Some(qt), ..Options::default() }, &mut NoProgress).unwrap_err();
        assert!(e.to_string().contains("proj.weight"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "only the source remains: {left:?}");
    }
    // Mismatched format/type combinations are refused before anything is written.
    assert!(convert(&src, &dir.path().join("x.gguf"), &Options::default(), &mut NoProgress).is_err());
    assert!(!dir.path().join("x.gguf").exists());
}

/// `--method lsq`: the model file holds exactly the table API's lsq bytes, says so per tensor,
/// and every quantized tensor's error falls; `min_cosine` takes lsq at a width where min/max
/// misses, before adding bits; GGUF refuses the option.
#[test]
fn lsq_conversion_matches_the_table_path_and_min_cosine_tries_it_first() {
    use arrow_quant_v2::arrow::schema::METHOD;
    use arrow_quant_v2::cpu::CpuBackend;
    use arrow_quant_v2::model::quantized::read_batches;
    use arrow_quant_v2::{BitWidth, GroupLayout, Method, QuantConfig, QuantizedTensor};
    use arrow_array::{Array, BinaryArray, StringArray};

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.safetensors");
    let model = small_model();
    write(&src, &model);
    let (minmax_dst, lsq_dst) = (dir.path().join("minmax.arrow"), dir.path().join("lsq.arrow"));
    let minmax = convert(&src, &minmax_dst, &Options::default(), &mut NoProgress).unwrap();
    let lsq_opts = Options { config: QuantConfig::default().with_method(Method::Lsq), ..Options::default() };
    let lsq = convert(&src, &lsq_dst, &lsq_opts, &mut NoProgress).unwrap();
    let (_, batches) = read_batches(&lsq_dst).unwrap();
    let mut affine = 0;
    for b in &batches {
        let name = b.column_by_name("layer_name").unwrap().as_any().downcast_ref::<StringArray>().unwrap().value(0).to_string();
        let method = b.column_by_name(METHOD).unwrap().as_any().downcast_ref::<StringArray>().unwrap().value(0).to_string();
        let r = lsq.iter().find(|r| r.name == name).unwrap();
        assert_eq!(method, r.method, "{name}");
        if r.format != "affine" {
            assert_eq!(method, "", "{name}");
            continue;
        }
        affine += 1;
        assert_eq!(method, "lsq");
        let m = model.iter().find(|m| m.name == name).unwrap();
        if m.dtype == Dtype::F32 {
            let layout = GroupLayout::from_shape(&m.shape, QuantConfig::default().with_method(Method::Lsq));
            let want = QuantizedTensor::quantize(&CpuBackend::new(), &name, &m.values, layout).unwrap();
            let data = b.column_by_name("quantized_data").unwrap().as_any().downcast_ref::<BinaryArray>().unwrap().value(0).to_vec();
            assert_eq!(data, want.packed, "{name}");
        }
        let before = minmax.iter().find(|r| r.name == name).unwrap();
        assert!(r.stats.snr_db() > before.stats.snr_db(), "{name}: lsq {} dB vs minmax {} dB", r.stats.snr_db(), before.stats.snr_db());
        // The report's comparison is exactly the min/max conversion's own measurement.
        assert_eq!(r.minmax_stats, Some(before.stats), "{name}");
        assert_eq!(before.minmax_stats, None, "{name}");
    }
    assert!(affine >= 2);
    // The report table carries both SNRs (min/max's null where no search ran); the summary says
    // what the search bought overall.
    let table = arrow_quant_v2::model::arrow_out::report_batch(&lsq);
    let col = |c: &str| table.column_by_name(c).unwrap().as_any().downcast_ref::<arrow_array::Float64Array>().unwrap().clone();
    let (snr, snr_minmax) = (col("snr_db"), col("snr_db_minmax"));
    for (i, r) in lsq.iter().enumerate() {
        assert_eq!(snr_minmax.is_null(i), r.method != "lsq", "{}", r.name);
        if r.method == "lsq" {
            assert!(snr.value(i) > snr_minmax.value(i), "{}", r.name);
        }
    }
    let summary = arrow_quant_v2::model::arrow_out::summary_table(&lsq);
    assert!(summary.contains(&format!("lsq: {affine} tensors, SNR ")) && summary.contains("with min/max at the same widths (+"), "{summary}");
    assert!(!arrow_quant_v2::model::arrow_out::summary_table(&minmax).contains("lsq:"));

    // A threshold 2-bit min/max misses on proj.weight but 2-bit lsq reaches.
    let proj = |reports: &[arrow_quant_v2::model::TensorReport]| reports.iter().find(|r| r.name == "proj.weight").unwrap().clone();
    let two = |m: Method| {
        let o = Options { config: QuantConfig::new(BitWidth::B2, 128).unwrap().with_method(m), ..Options::default() };
        proj(&convert(&src, &dir.path().join("two.arrow"), &o, &mut NoProgress).unwrap()).stats.cosine()
    };
    let (c_minmax, c_lsq) = (two(Method::MinMax), two(Method::Lsq));
    assert!(c_lsq > c_minmax, "{c_lsq} vs {c_minmax}");
    let threshold = (c_minmax + c_lsq) / 2.0;
    let picked = proj(&convert(&src, &dir.path().join("pick.arrow"), &Options { min_cosine: Some(threshold), ..Options::default() }, &mut NoProgress).unwrap());
    assert_eq!((picked.bit_width, picked.method.as_str()), (2, "lsq"), "{}", picked.reason);

    let e = convert(&src, &dir.path().join("x.gguf"), &Options { qtype: Some(QuantType::Gguf(FileType::Q4_0)), ..lsq_opts }, &mut NoProgress).unwrap_err();
    assert!(e.to_string().contains("method 'lsq'"), "{e}");
}
