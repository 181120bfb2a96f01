//! The pipelined converter against the same conversion one tensor at a time: byte-identical
//! files for every output format, the same first error, nothing left behind on failure.

mod model_common;

use std::path::{Path, PathBuf};

use arrow_quant_v2::gguf::mix::FileType;
use arrow_quant_v2::model::pipeline::Limits;
use arrow_quant_v2::model::{convert, NoProgress, Options, Progress, QuantType};
use arrow_quant_v2::{QuantError, Result};
use model_common::*;
use safetensors::Dtype;

/// Large tensors (several measured chunks each, in every dtype), many small ones (encoded in
/// batches), 1-D ones (kept), spread over two shards.
fn checkpoint(dir: &Path) -> PathBuf {
    let folder = dir.join("ck");
    std::fs::create_dir(&folder).unwrap();
    let mut first = vec![
        t("big.f32.weight", Dtype::F32, &[1100, 1024], 1),
        t("big.bf16.weight", Dtype::BF16, &[2100, 512], 2),
        t("big.f16.weight", Dtype::F16, &[1030, 1024], 3),
    ];
    let names: Vec<&'static str> = (0..40).map(|i| &*Box::leak(format!("blocks.{i}.attn.weight").into_boxed_str())).collect();
    let mut second: Vec<T> = names
        .iter()
        .enumerate()
        .map(|(i, n)| t(n, [Dtype::F32, Dtype::BF16, Dtype::F16][i % 3], &[64, 128 + 32 * (i % 4)], 10 + i as u64))
        .collect();
    second.push(t("norm.weight", Dtype::F32, &[1024], 99));
    first.push(t("embed.weight", Dtype::BF16, &[300, 256], 100));
    write(&folder.join("model-00001-of-00002.safetensors"), &first);
    write(&folder.join("model-00002-of-00002.safetensors"), &second);
    let map: serde_json::Map<String, serde_json::Value> = first
        .iter()
        .map(|t| (t.name.to_string(), "model-00001-of-00002.safetensors".into()))
        .chain(second.iter().map(|t| (t.name.to_string(), "model-00002-of-00002.safetensors".into())))
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(folder.join("model.safetensors.index.json"), index.to_string()).unwrap();
    folder
}

/// One tensor at a time, the default pipeline, and one with budgets so small that the
/// read-ahead waits on every tensor and batches hold a few small tensors.
fn limits() -> [Limits; 3] {
    [Limits::sequential(), Limits::default(), Limits { read_ahead: 3 << 20, batch: 100 << 10 }]
}

fn convert_all(src: &Path, dst: &Path, opts: &Options) -> Vec<Vec<u8>> {
    limits()
        .into_iter()
        .map(|pipeline| {
            let opts = Options { pipeline, ..opts.clone() };
            convert(src, dst, &opts, &mut NoProgress).unwrap_or_else(|e| panic!("{pipeline:?}: {e}"));
            std::fs::read(dst).unwrap()
        })
        .collect()
}

fn assert_same(files: &[Vec<u8>], what: &str) {
    for (i, f) in files.iter().enumerate().skip(1) {
        assert!(f == &files[0], "{what}: {:?} differs from the sequential run", limits()[i]);
    }
}

#[test]
fn every_format_is_byte_identical_to_the_sequential_run() {
    let dir = tempfile::tempdir().unwrap();
    let src = checkpoint(dir.path());
    let cases: Vec<(&str, Options)> = vec![
        ("m.arrow", Options::default()),
        ("m.parquet", Options::default()),
        ("m8.arrow", Options { config: arrow_quant_v2::QuantConfig::new(arrow_quant_v2::BitWidth::B8, 64).unwrap(), ..Options::default() }),
        ("mc.arrow", Options { min_cosine: Some(0.999), ..Options::default() }),
        ("q4_0.gguf", Options { qtype: Some(QuantType::Gguf(FileType::Q4_0)), ..Options::default() }),
        ("q8_0.gguf", Options { qtype: Some(QuantType::Gguf(FileType::Q8_0)), ..Options::default() }),
        ("q4_k_m.gguf", Options { qtype: Some(QuantType::Gguf(FileType::Q4_K_M)), ..Options::default() }),
        ("f16.gguf", Options { qtype: Some(QuantType::Gguf(FileType::F16)), ..Options::default() }),
    ];
    for (name, opts) in cases {
        let dst = dir.path().join(name);
        assert_same(&convert_all(&src, &dst, &opts), name);
    }
    // GGUF in: tensors copied as they are and tensors requantized, through the same stages.
    let f16 = dir.path().join("in.gguf");
    convert(&src, &f16, &Options { qtype: Some(QuantType::Gguf(FileType::F16)), ..Options::default() }, &mut NoProgress).unwrap();
    let opts = Options { qtype: Some(QuantType::Gguf(FileType::Q4_K_M)), keep: vec!["blocks.1*".into()], ..Options::default() };
    assert_same(&convert_all(&f16, &dir.path().join("re.gguf"), &opts), "GGUF -> q4_k_m");
    let q8 = dir.path().join("q8.gguf");
    convert(&src, &q8, &Options { qtype: Some(QuantType::Gguf(FileType::Q8_0)), ..Options::default() }, &mut NoProgress).unwrap();
    let opts = Options { qtype: Some(QuantType::Gguf(FileType::Q4_0)), allow_requantize: true, ..Options::default() };
    assert_same(&convert_all(&q8, &dir.path().join("req.gguf"), &opts), "requantized GGUF");
    assert_same(&convert_all(&q8, &dir.path().join("req.arrow"), &Options { allow_requantize: true, ..Options::default() }), "GGUF -> Arrow");
}

/// Counts progress reports and fails at the `fail_at`-th.
struct Failing {
    calls: usize,
    fail_at: usize,
}

impl Progress for Failing {
    fn advance(&mut self, _done: u64, _total: u64) -> Result<()> {
        self.calls += 1;
        if self.calls == self.fail_at {
            return Err(QuantError::value("stopped by the test"));
        }
        Ok(())
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "ck" && n != "bad")
        .collect()
}

#[test]
fn the_first_error_is_the_sequential_one_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    // NaN in the 20th small tensor and Inf in a later one: the NaN is reported, whatever ran
    // ahead.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let mut tensors: Vec<T> = (0..40).map(|i| t(Box::leak(format!("w.{i}.weight").into_boxed_str()), Dtype::F32, &[64, 256], i)).collect();
    tensors[20].values[777] = f32::NAN;
    tensors[31].values[5] = f32::INFINITY;
    write(&bad.join("model.safetensors"), &tensors);
    for out in ["o.arrow", "o.gguf"] {
        let mut messages = Vec::new();
        for pipeline in limits() {
            let opts = Options { pipeline, ..Options::default() };
            let e = convert(&bad.join("model.safetensors"), &dir.path().join(out), &opts, &mut NoProgress).unwrap_err();
            messages.push(e.to_string());
            assert!(leftovers(dir.path()).is_empty(), "{out} {pipeline:?}: {:?}", leftovers(dir.path()));
        }
        assert!(messages[0].contains("w.20.weight") && messages[0].contains("777"), "{}", messages[0]);
        assert!(messages.iter().all(|m| m == &messages[0]), "{messages:?}");
    }
    // A progress report that fails (a Python callback raising) stops the conversion there.
    let src = checkpoint(dir.path());
    for pipeline in limits() {
        let mut p = Failing { calls: 0, fail_at: 10 };
        let opts = Options { pipeline, ..Options::default() };
        let e = convert(&src, &dir.path().join("p.arrow"), &opts, &mut p).unwrap_err();
        assert!(e.to_string().contains("stopped by the test"));
        assert_eq!(p.calls, 10, "{pipeline:?}");
        assert!(leftovers(dir.path()).is_empty(), "{pipeline:?}: {:?}", leftovers(dir.path()));
    }
}
