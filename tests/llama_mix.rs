//! llama.cpp's quantization mixes (`arrow_quant_v2::gguf::mix`) against goldens recorded from
//! the real `llama-quantize` (llama.cpp b10605) by tests/data/llama_mix/generate.py: for every
//! model there and every case (a file type, options), the type of every tensor, or the error.

use std::path::{Path, PathBuf};

use arrow_quant_v2::gguf::mix::{choose_types, FileType, MixOptions, ModelInfo, TensorDesc, TypeChoice};
use arrow_quant_v2::gguf::MetaValue;
use arrow_quant_v2::quant::ggml::GgmlType;
use serde_json::Value;

struct Golden {
    file: String,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorDesc>,
    cases: Vec<Value>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama_mix")
}

fn meta_value(kind: &str, v: &Value) -> MetaValue {
    let ints = || -> Vec<i64> { v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect() };
    match kind {
        "str" => MetaValue::Str(v.as_str().unwrap().to_string()),
        "u32" => MetaValue::U32(v.as_u64().unwrap() as u32),
        "i32" => MetaValue::I32(v.as_i64().unwrap() as i32),
        "u64" => MetaValue::U64(v.as_u64().unwrap()),
        "f32" => MetaValue::F32(v.as_f64().unwrap() as f32),
        "bool" => MetaValue::Bool(v.as_bool().unwrap()),
        "arr[u32]" => MetaValue::U32Array(ints().into_iter().map(|x| x as u32).collect()),
        "arr[i32]" => MetaValue::I32Array(ints().into_iter().map(|x| x as i32).collect()),
        "arr[f32]" => MetaValue::F32Array(v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()),
        other => panic!("metadata kind {other} not handled"),
    }
}

fn ty(s: &str) -> GgmlType {
    s.parse().unwrap_or_else(|e| panic!("type {s}: {e}"))
}

fn load(path: &Path) -> Golden {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let metadata = doc["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m[0].as_str().unwrap().to_string(), meta_value(m[1].as_str().unwrap(), &m[2])))
        .collect();
    let tensors = doc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let ne: Vec<u64> = t[1].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
            TensorDesc::new(t[0].as_str().unwrap(), &ne, ty(t[2].as_str().unwrap()))
        })
        .collect();
    Golden {
        file: path.file_name().unwrap().to_string_lossy().into_owned(),
        metadata,
        tensors,
        cases: doc["cases"].as_array().unwrap().clone(),
    }
}

fn goldens() -> Vec<Golden> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load(p)).collect()
}

fn options(case: &Value) -> MixOptions {
    let o = &case["options"];
    let flag = |k: &str| o.get(k).and_then(Value::as_bool).unwrap_or(false);
    let given = |k: &str| o.get(k).and_then(Value::as_str).map(ty);
    MixOptions {
        ftype: case["ftype"].as_str().unwrap().parse::<FileType>().unwrap(),
        pure: flag("pure"),
        leave_output_tensor: flag("leave_output_tensor"),
        output_tensor_type: given("output_tensor_type"),
        token_embedding_type: given("token_embedding_type"),
        has_imatrix: flag("imatrix"),
    }
}

#[test]
fn every_golden_case_matches_llama_quantize() {
    let goldens = goldens();
    assert!(goldens.len() >= 9, "expected the goldens of tests/data/llama_mix, found {}", goldens.len());
    let mut failures = Vec::new();
    let (mut n_cases, mut n_checked) = (0, 0);
    for g in &goldens {
        let model = ModelInfo::from_metadata(&g.metadata).unwrap_or_else(|e| panic!("{}: {e}", g.file));
        for case in &g.cases {
            n_cases += 1;
            let name = case["name"].as_str().unwrap();
            let got = choose_types(&model, &g.tensors, &options(case));
            if let Some(err) = case.get("error").and_then(Value::as_str) {
                match got {
                    Ok(_) => failures.push(format!("{} [{name}]: llama-quantize fails ({err}), we did not", g.file)),
                    Err(e) => {
                        let ours = e.to_string().to_ascii_lowercase();
                        let want = if err.starts_with("no tensor type fallback is defined for type") {
                            err.to_ascii_lowercase()
                        } else {
                            "not a multiple of".to_string() // GGML_ASSERT: row not divisible by the block
                        };
                        if !ours.contains(&want) {
                            failures
                                .push(format!("{} [{name}]: error '{e}' does not say '{want}' (llama: {err})", g.file));
                        }
                    }
                }
                continue;
            }
            let got = match got {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!("{} [{name}]: error {e}", g.file));
                    continue;
                }
            };
            let want = case["types"].as_array().unwrap();
            assert_eq!(want.len(), g.tensors.len(), "{} [{name}]", g.file);
            for ((t, c), w) in g.tensors.iter().zip(&got).zip(want) {
                n_checked += 1;
                let w = ty(w.as_str().unwrap());
                if c.ty != w {
                    failures.push(format!(
                        "{} [{name}] {}: llama-quantize {w}, we {} (note: {:?})",
                        g.file, t.name, c.ty, c.note
                    ));
                }
                if c.quantize != (c.ty != t.ty) {
                    failures.push(format!(
                        "{} [{name}] {}: quantize flag {} for {} -> {}",
                        g.file, t.name, c.quantize, t.ty, c.ty
                    ));
                }
            }
        }
    }
    let shown: Vec<&String> = failures.iter().take(40).collect();
    assert!(
        failures.is_empty(),
        "{} mismatches with llama-quantize (of {n_checked} tensor choices in {n_cases} cases); first ones:\n{}",
        failures.len(),
        shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    assert!(n_checked > 20_000, "only {n_checked} tensor choices checked");
}

#[test]
fn minilm_f16_input_gets_the_choices_of_the_f32_one() {
    let a = load(&dir().join("minilm-f32.json"));
    let b = load(&dir().join("minilm-f16.json"));
    let names = |g: &Golden| g.tensors.iter().map(|t| (t.name.clone(), t.ne.clone())).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b));
    assert!(b.tensors.iter().any(|t| t.ty == GgmlType::F16));
    for &ftype in FileType::ALL {
        let opts = MixOptions::new(ftype);
        let ca = choose_types(&ModelInfo::from_metadata(&a.metadata).unwrap(), &a.tensors, &opts).unwrap();
        let cb = choose_types(&ModelInfo::from_metadata(&b.metadata).unwrap(), &b.tensors, &opts).unwrap();
        let tys = |c: &[TypeChoice]| c.iter().map(|c| c.ty).collect::<Vec<_>>();
        assert_eq!(tys(&ca), tys(&cb), "{ftype}");
    }
}

#[test]
fn model_info_from_the_goldens() {
    let info = |file: &str| ModelInfo::from_metadata(&load(&dir().join(file)).metadata).unwrap();
    let m = info("llama-gqa.json"); // head_count_kv written per layer (an i32 array)
    assert_eq!(
        (m.arch.as_str(), m.n_layer, m.n_head, m.n_head_kv, m.n_gqa(), m.is_70b),
        ("llama", 32, 32, 8, 4, false)
    );
    let m = info("llama-70b.json");
    assert_eq!((m.n_layer, m.n_gqa(), m.is_70b), (80, 8, true));
    let m = info("llama-moe8.json");
    assert_eq!(m.n_expert, 8);
    let m = info("minilm-f32.json"); // no head_count_kv: defaults to head_count
    assert_eq!((m.arch.as_str(), m.n_layer, m.n_head, m.n_head_kv), ("bert", 6, 12, 12));
    let m = info("falcon.json");
    assert_eq!((m.arch.as_str(), m.n_gqa()), ("falcon", 8));
}

#[test]
fn model_info_refuses_what_llama_cpp_refuses() {
    let base = |extra: Vec<(&str, MetaValue)>| -> Vec<(String, MetaValue)> {
        let mut v = vec![("general.architecture".to_string(), MetaValue::Str("llama".into()))];
        v.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        v
    };
    let err = |m: Vec<(String, MetaValue)>| ModelInfo::from_metadata(&m).unwrap_err().to_string();
    assert!(err(base(vec![])).contains("key not found in model: llama.block_count"));
    assert!(err(base(vec![("llama.block_count", MetaValue::I32(4))])).contains("wrong type"));
    assert!(err(base(vec![("llama.block_count", MetaValue::U32(0))])).contains("llama.block_count"));
    let kv = vec![
        ("llama.block_count", MetaValue::U32(4)),
        ("llama.attention.head_count_kv", MetaValue::U32Array(vec![8, 8])),
    ];
    assert!(err(base(kv)).contains("wrong array length; expected 4, got 2"));
    let ok = ModelInfo::from_metadata(&base(vec![
        ("llama.block_count", MetaValue::U32(4)),
        ("llama.attention.head_count", MetaValue::U32(16)),
        ("llama.attention.head_count_kv", MetaValue::U32Array(vec![4, 8, 8, 8])),
    ]))
    .unwrap();
    assert_eq!((ok.n_head, ok.n_head_kv, ok.n_gqa()), (16, 4, 4)); // layer 0
}
