//! Reading checkpoints: single files, shards with an index, diffusers folders, and the errors
//! for corrupt or incomplete ones.

mod model_common;

use arrow_quant_v2::model::{Checkpoint, TensorDtype};
use arrow_quant_v2::QuantError;
use half::{bf16, f16};
use model_common::*;
use safetensors::Dtype;

fn err_text(r: Result<Checkpoint, QuantError>) -> (String, bool) {
    let e = r.expect_err("should fail");
    (e.to_string(), matches!(e, QuantError::Io { .. }))
}

#[test]
fn single_file_lists_and_reads_every_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let model = small_model();
    write(&path, &model);
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.tensors.len(), model.len());
    for m in &model {
        let i = ck.tensors.iter().position(|t| t.name == m.name).unwrap();
        let info = &ck.tensors[i];
        assert_eq!(info.shape, m.shape);
        let got = ck.read(i).unwrap().values().to_f32().into_owned();
        let want: Vec<f32> = match m.dtype {
            Dtype::F16 => {
                assert_eq!(info.dtype, TensorDtype::F16);
                m.values.iter().map(|v| f16::from_f32(*v).to_f32()).collect()
            }
            Dtype::BF16 => {
                assert_eq!(info.dtype, TensorDtype::BF16);
                m.values.iter().map(|v| bf16::from_f32(*v).to_f32()).collect()
            }
            _ => m.values.clone(),
        };
        assert_eq!(got, want, "{}", m.name);
    }
}

#[test]
fn sharded_folder_with_index() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model();
    let (a, b) = model.split_at(3);
    write(&dir.path().join("model-00001-of-00002.safetensors"), a);
    write(&dir.path().join("model-00002-of-00002.safetensors"), b);
    let map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|t| (t.name.to_string(), "model-00001-of-00002.safetensors".into()))
        .chain(b.iter().map(|t| (t.name.to_string(), "model-00002-of-00002.safetensors".into())))
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.files.len(), 2);
    let mut names: Vec<_> = ck.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    let mut want: Vec<_> = model.iter().map(|t| t.name).collect();
    want.sort();
    assert_eq!(names, want);

    // A missing shard is an I/O error naming the shard.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let (msg, is_io) = err_text(Checkpoint::open(dir.path()));
    assert!(is_io && msg.contains("model-00002-of-00002.safetensors") && msg.contains("missing"), "{msg}");

    // An index that promises a tensor the shard does not hold.
    write(&dir.path().join("model-00002-of-00002.safetensors"), &b[..1]);
    let (msg, _) = err_text(Checkpoint::open(dir.path()));
    assert!(msg.contains("model-00002-of-00002.safetensors") && msg.contains("does not"), "{msg}");
}

#[test]
fn diffusers_folder_prefixes_names() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["unet", "text_encoder"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    std::fs::create_dir(dir.path().join("scheduler")).unwrap();
    std::fs::write(dir.path().join("model_index.json"), "{}").unwrap();
    write(&dir.path().join("unet/diffusion_pytorch_model.safetensors"), &small_model()[..2]);
    write(&dir.path().join("text_encoder/model.safetensors"), &small_model()[2..4]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let mut names: Vec<_> = ck.tensors.iter().map(|t| t.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["text_encoder/linear.weight", "text_encoder/proj.weight", "unet/conv.bias", "unet/conv.weight"]);
}

#[test]
fn corrupt_files_give_errors_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");

    // Offsets past the end of the data (a truncated file).
    write(&p, &small_model());
    let full = std::fs::read(&p).unwrap();
    std::fs::write(&p, &full[..full.len() - 100]).unwrap();
    let (msg, _) = err_text(Checkpoint::open(&p));
    assert!(msg.contains("bad.safetensors") && msg.contains("truncated"), "{msg}");

    // Truncated inside the header.
    std::fs::write(&p, &full[..20]).unwrap();
    let (msg, _) = err_text(Checkpoint::open(&p));
    assert!(msg.contains("truncated"), "{msg}");
    std::fs::write(&p, [1u8, 2, 3]).unwrap();
    assert!(err_text(Checkpoint::open(&p)).0.contains("too short"));

    // Overlapping tensors.
    write_raw(
        &p,
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
        24,
    );
    let (msg, _) = err_text(Checkpoint::open(&p));
    assert!(msg.contains("overlap") && msg.contains("'a'") && msg.contains("'b'"), "{msg}");

    // Unknown dtype.
    write_raw(&p, r#"{"w":{"dtype":"F7","shape":[4],"data_offsets":[0,16]}}"#, 16);
    let (msg, _) = err_text(Checkpoint::open(&p));
    assert!(msg.contains("'w'") && msg.contains("unknown dtype"), "{msg}");

    // Byte length that does not match dtype and shape.
    write_raw(&p, r#"{"w":{"dtype":"F16","shape":[4],"data_offsets":[0,16]}}"#, 16);
    let (msg, _) = err_text(Checkpoint::open(&p));
    assert!(msg.contains("'w'") && msg.contains("need 8"), "{msg}");

    // Absurd header length, and a header that is not JSON.
    let mut junk = u64::MAX.to_le_bytes().to_vec();
    junk.extend([0u8; 16]);
    std::fs::write(&p, junk).unwrap();
    assert!(err_text(Checkpoint::open(&p)).0.contains("header length"));
    write_raw(&p, "{not json", 0);
    assert!(err_text(Checkpoint::open(&p)).0.contains("JSON"));

    // Missing file: an I/O error.
    let (msg, is_io) = err_text(Checkpoint::open(dir.path().join("nope.safetensors")));
    assert!(is_io && msg.contains("nope.safetensors"), "{msg}");
}

/// A Parquet page header that declares a list of 2^31 skipped values (a fuzz finding): parquet's
/// reader skipped each of them past the end of the data without an error, for minutes. It is
/// now refused at the first read past the end, with an error that says so.
#[test]
fn a_parquet_page_header_past_the_end_of_the_file_is_an_error_at_once() {
    use arrow_quant_v2::model::quantized::QuantFile;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/quantized_reader/page-header-skips-past-eof.parquet");
    let err = QuantFile::open(&path).err().expect("a damaged file").to_string();
    assert!(err.contains("not a readable Parquet file") && err.contains("a page header runs past the end of the file"), "{err}");
}
