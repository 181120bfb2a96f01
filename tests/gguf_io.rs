//! GGUF reading and writing, and importance-matrix reading: round trips, files written by gguf-py
//! (tests/data/gguf, made by make_fixtures.py there), and one test per refusal of a bad file.

use std::path::PathBuf;

use arrow_quant_v2::gguf::imatrix::Imatrix;
use arrow_quant_v2::gguf::{value_type as vt, GgmlType, GgufFile, GgufWriter, MetaValue, TensorPlan};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn meta(items: &[(&str, MetaValue)]) -> Vec<(String, MetaValue)> {
    items.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn plan(name: &str, shape: &[usize], ty: GgmlType) -> TensorPlan {
    TensorPlan { name: name.into(), shape: shape.to_vec(), ty }
}

/// A whole GGUF file written by our writer; each tensor's data is `len` bytes counting up.
fn write(metadata: &[(String, MetaValue)], plans: Vec<TensorPlan>) -> Vec<u8> {
    let sizes: Vec<usize> = plans.iter().map(|p| p.n_bytes().unwrap()).collect();
    let names: Vec<String> = plans.iter().map(|p| p.name.clone()).collect();
    let mut w = GgufWriter::new(Vec::new(), metadata, plans).unwrap();
    for (name, n) in names.iter().zip(sizes) {
        w.write_tensor(name, &(0..n).map(|i| i as u8).collect::<Vec<_>>()).unwrap();
    }
    w.finish().unwrap()
}

/// Writes `f` back out (metadata, tensor infos and data) with our writer.
fn rewrite(f: &GgufFile) -> Vec<u8> {
    let plans = f.tensors.iter().map(|t| plan(&t.name, &t.shape, t.ty)).collect();
    let mut w = GgufWriter::new(Vec::new(), &f.metadata, plans).unwrap();
    for t in &f.tensors {
        w.write_tensor(&t.name, f.data(t)).unwrap();
    }
    w.finish().unwrap()
}

fn read_err(bytes: Vec<u8>) -> String {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("a bad file was accepted"),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
fn assert_contains(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(message.contains(p), "expected {p:?} in the error: {message}");
    }
}

/// Hand-built GGUF headers, to write what our writer refuses to.
struct Raw {
    version: u32,
    n_kv: u64,
    kv: Vec<u8>,
    n_tensors: u64,
    infos: Vec<u8>,
    align: usize,
}

fn lstr(s: &[u8]) -> Vec<u8> {
    [&(s.len() as u64).to_le_bytes()[..], s].concat()
}

impl Raw {
    fn new() -> Self {
        Self { version: 3, n_kv: 0, kv: vec![], n_tensors: 0, infos: vec![], align: 32 }
    }

    fn kv(mut self, key: &[u8], ty: u32, value: &[u8]) -> Self {
        self.n_kv += 1;
        self.kv.extend(lstr(key));
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(value);
        self
    }

    fn alignment(self, a: u32) -> Self {
        let r = self.kv(b"general.alignment", vt::UINT32, &a.to_le_bytes());
        Raw { align: a as usize, ..r }
    }

    fn tensor(mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> Self {
        self.n_tensors += 1;
        self.infos.extend(lstr(name.as_bytes()));
        self.infos.extend((ne.len() as u32).to_le_bytes());
        for d in ne {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self
    }

    /// The file, with `data` zero bytes after the padded header.
    fn build(&self, data: usize) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend(self.n_tensors.to_le_bytes());
        b.extend(self.n_kv.to_le_bytes());
        b.extend(&self.kv);
        b.extend(&self.infos);
        b.resize(b.len().div_ceil(self.align) * self.align + data, 0);
        b
    }
}

/// An array value's bytes (item type, count, items), for `Raw::kv(.., vt::ARRAY, ..)`.
fn arr(item: u32, n: u64, items: &[u8]) -> Vec<u8> {
    [&item.to_le_bytes()[..], &n.to_le_bytes(), items].concat()
}

// ---------------------------------------------------------------- round trips

fn every_kind() -> Vec<(String, MetaValue)> {
    use MetaValue::*;
    meta(&[
        ("general.architecture", Str("llama".into())),
        ("general.alignment", U32(64)),
        ("t.u8", U8(255)),
        ("t.i8", I8(-128)),
        ("t.u16", U16(65535)),
        ("t.i16", I16(-32768)),
        ("t.u32", U32(u32::MAX)),
        ("t.i32", I32(i32::MIN)),
        ("t.f32", F32(-0.0)),
        ("t.f32_sub", F32(f32::from_bits(1))),
        ("t.bool", Bool(true)),
        ("t.bool_f", Bool(false)),
        ("t.str", Str("héllo\n\0\"".into())),
        ("t.str_empty", Str(String::new())),
        ("t.u64", U64(u64::MAX)),
        ("t.i64", I64(i64::MIN)),
        ("t.f64", F64(f64::MIN_POSITIVE)),
        ("t.a_u8", U8Array(vec![0, 1, 255])),
        ("t.a_i8", I8Array(vec![-1])),
        ("t.a_u16", U16Array(vec![7, 8])),
        ("t.a_i16", I16Array(vec![-7])),
        ("t.a_u32", U32Array(vec![])),
        ("t.a_i32", I32Array(vec![1, -2, 3])),
        ("t.a_f32", F32Array(vec![0.5, f32::INFINITY, -0.0])),
        ("t.a_bool", BoolArray(vec![true, false])),
        ("t.a_str", StrArray(vec!["a".into(), "".into(), "日本".into()])),
        ("t.a_u64", U64Array(vec![u64::MAX])),
        ("t.a_i64", I64Array(vec![i64::MIN, 0])),
        ("t.a_f64", F64Array(vec![0.1, f64::NEG_INFINITY])),
        ("t.a_nested", Arrays(vec![I32Array(vec![1, 2]), StrArray(vec!["x".into()]), Arrays(vec![]), Arrays(vec![F64Array(vec![1.0])])])),
        ("t.a_empty_nested", Arrays(vec![])),
    ])
}

#[test]
fn every_metadata_type_round_trips_byte_for_byte() {
    let metadata = every_kind();
    let plans = vec![plan("a", &[3, 64], GgmlType::Q8_0), plan("b", &[5], GgmlType::F16), plan("", &[], GgmlType::F32)];
    let first = write(&metadata, plans);
    let f = GgufFile::from_bytes(first.clone()).unwrap();
    assert_eq!(f.metadata, metadata, "values come back as written");
    assert_eq!(f.alignment(), 64);
    let second = rewrite(&f);
    assert_eq!(first, second, "write → read → write gives the same bytes");
    // A scalar tensor is stored as one dim of 1, as ggml writes it.
    assert_eq!(f.tensors[2].shape, vec![1]);
}

#[test]
fn nan_payloads_and_odd_floats_keep_their_bits() {
    let nan = f32::from_bits(0x7fc0_1234);
    let dnan = f64::from_bits(0xfff8_0000_dead_beef);
    let metadata = meta(&[("n", MetaValue::F32(nan)), ("d", MetaValue::F64Array(vec![dnan])), ("e", MetaValue::F32Array(vec![nan]))]);
    let first = write(&metadata, vec![]);
    let f = GgufFile::from_bytes(first.clone()).unwrap();
    match f.get("n") {
        Some(MetaValue::F32(x)) => assert_eq!(x.to_bits(), 0x7fc0_1234),
        other => panic!("{other:?}"),
    }
    assert_eq!(rewrite(&f), first);
}

#[test]
fn a_bool_byte_other_than_0_or_1_reads_true_and_is_written_as_1_like_ggml() {
    let f = GgufFile::from_bytes(Raw::new().kv(b"b", vt::BOOL, &[2]).kv(b"a", vt::ARRAY, &arr(vt::BOOL, 1, &[7])).build(0)).unwrap();
    assert_eq!(f.get("b"), Some(&MetaValue::Bool(true)));
    assert_eq!(f.get("a"), Some(&MetaValue::BoolArray(vec![true])));
    assert_eq!(rewrite(&f), Raw::new().kv(b"b", vt::BOOL, &[1]).kv(b"a", vt::ARRAY, &arr(vt::BOOL, 1, &[1])).build(0));
}

#[test]
fn gguf_py_file_is_read_with_the_right_values() {
    use MetaValue::*;
    let f = GgufFile::from_bytes(fixture("gguf_py_all_types.gguf")).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 64);
    let expect = meta(&[
        ("general.architecture", Str("llama".into())),
        ("general.alignment", U32(64)),
        ("test.u8", U8(200)),
        ("test.i8", I8(-5)),
        ("test.u16", U16(60000)),
        ("test.i16", I16(-30000)),
        ("test.u32", U32(4_000_000_000)),
        ("test.i32", I32(-2_000_000_000)),
        ("test.f32", F32(1.5)),
        ("test.bool", Bool(true)),
        ("test.str", Str("héllo".into())),
        ("test.u64", U64((1 << 63) + 5)),
        ("test.i64", I64(-(1 << 62))),
        ("test.f64", F64(std::f64::consts::PI)),
        ("test.arr_u8", U8Array(vec![1, 255])),
        ("test.arr_i8", I8Array(vec![-1, 2])),
        ("test.arr_u16", U16Array(vec![65535])),
        ("test.arr_i16", I16Array(vec![-2, 3])),
        ("test.arr_u32", U32Array(vec![7, 8, 9])),
        ("test.arr_i32", I32Array(vec![1, -2, 3])),
        ("test.arr_f32", F32Array(vec![0.5, 0.25])),
        ("test.arr_bool", BoolArray(vec![true, false])),
        ("test.arr_str", StrArray(vec!["a".into(), "bc".into(), "".into()])),
        ("test.arr_u64", U64Array(vec![u64::MAX])),
        ("test.arr_i64", I64Array(vec![i64::MIN])),
        ("test.arr_f64", F64Array(vec![0.1, -2.5])),
        ("test.nested", Arrays(vec![I32Array(vec![1, 2]), I32Array(vec![3])])),
        ("test.nested_str", Arrays(vec![StrArray(vec!["x".into()]), StrArray(vec!["y".into(), "z".into()])])),
        ("test.nested3", Arrays(vec![Arrays(vec![I32Array(vec![1])]), Arrays(vec![I32Array(vec![2, 3])])])),
    ]);
    assert_eq!(f.metadata, expect);
    assert_eq!(f.get_u64("test.u32"), Some(4_000_000_000));
    assert_eq!(f.get_u64("test.i8"), None);
    assert_eq!(f.get_str("general.architecture"), Some("llama"));

    let infos: Vec<_> = f.tensors.iter().map(|t| (t.name.as_str(), t.shape.clone(), t.ty, t.start, t.len)).collect();
    assert_eq!(
        infos,
        vec![
            ("tok_embd.weight", vec![2, 8], GgmlType::F32, 1472, 64),
            ("blk.0.attn_q.weight", vec![4, 8], GgmlType::F16, 1536, 64),
            ("blk.0.ffn_down.weight", vec![2, 32], GgmlType::Q8_0, 1600, 68),
            ("output_norm.weight", vec![8], GgmlType::F32, 1728, 32),
            ("blk.0.ids", vec![2, 2, 3], GgmlType::I32, 1792, 48),
        ]
    );
    assert_eq!(f.data_start(), 1472);
    assert!(f.header_end() <= 1472 && f.header_end() > 1472 - 64);
    assert_eq!(f.tensors[4].ne(), vec![3, 2, 2]);
    let embd: Vec<f32> = f.data(&f.tensors[0]).chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(embd, (0..16).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(f.data(&f.tensors[2]), &(0..68).map(|i| i as u8).collect::<Vec<_>>()[..]);
    assert_eq!(f.tensor("blk.0.ids").map(|t| t.n_elements()), Some(12));
}

#[test]
fn gguf_py_file_rewritten_by_us_is_identical() {
    let bytes = fixture("gguf_py_all_types.gguf");
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(rewrite(&f), bytes);
}

#[test]
fn opening_a_path_works_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.gguf");
    std::fs::write(&good, fixture("gguf_py_all_types.gguf")).unwrap();
    assert_eq!(GgufFile::open(&good).unwrap().tensors.len(), 5);
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = GgufFile::open(&empty).err().unwrap().to_string();
    assert_contains(&e, &["empty.gguf", "truncated"]);
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &fixture("gguf_py_all_types.gguf")[..1600]).unwrap();
    let e = GgufFile::open(&cut).err().unwrap().to_string();
    assert_contains(&e, &["cut.gguf", "blk.0.ffn_down.weight", "runs past the end"]);
    assert!(GgufFile::open(&dir.path().join("missing.gguf")).is_err());
}

#[test]
fn every_truncation_is_an_error() {
    // Files from gguf-py and from us. Only the last tensor's trailing padding may be cut: ggml
    // (and llama.cpp's mmap loader) check a tensor's data, not its padding, against the file end.
    let ours = write(&every_kind(), vec![plan("a", &[2, 32], GgmlType::Q8_0), plan("b", &[3], GgmlType::F32)]);
    for bytes in [fixture("gguf_py_all_types.gguf"), ours] {
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        let t = f.tensors.last().unwrap();
        let data_end = t.start + t.len;
        for n in 0..data_end {
            assert!(GgufFile::from_bytes(bytes[..n].to_vec()).is_err(), "a {n}-byte prefix was accepted");
        }
        for n in data_end..=bytes.len() {
            assert!(GgufFile::from_bytes(bytes[..n].to_vec()).is_ok(), "a {n}-byte prefix was refused");
        }
    }
}

#[test]
fn writer_takes_its_alignment_from_the_metadata() {
    let plans = || vec![plan("a", &[3], GgmlType::F32), plan("b", &[5], GgmlType::F32)];
    for (align, m) in
        [(32, vec![]), (128, meta(&[("general.alignment", MetaValue::U32(128))])), (1, meta(&[("general.alignment", MetaValue::U32(1))]))]
    {
        let f = GgufFile::from_bytes(write(&m, plans())).unwrap();
        assert_eq!(f.alignment(), align);
        assert_eq!(f.data_start() % align, 0);
        assert_eq!(f.tensors[1].start as u64 - f.data_start(), 12u64.div_ceil(align) * align);
    }
    for (bad, text) in [(MetaValue::U32(0), "not a power of two"), (MetaValue::U32(48), "not a power of two"), (MetaValue::U64(32), "must be a u32")]
    {
        let e = GgufWriter::new(Vec::new(), &meta(&[("general.alignment", bad)]), plans()).err().unwrap().to_string();
        assert_contains(&e, &["general.alignment", text]);
    }
}

#[test]
fn writer_refuses_what_the_reader_would() {
    let new = |m: &[(String, MetaValue)], p: Vec<TensorPlan>| GgufWriter::new(Vec::new(), m, p).err().map(|e| e.to_string()).unwrap_or_default();
    assert_contains(&new(&[], vec![plan("w", &[4, 48], GgmlType::Q4_0)]), &["'w'", "row length 48 is not a multiple of 32"]);
    assert_contains(&new(&[], vec![plan("w", &[1, 1, 1, 1, 1], GgmlType::F32)]), &["'w'", "5 dimensions"]);
    assert_contains(&new(&[], vec![plan("w", &[1 << 40, 1 << 40], GgmlType::F32)]), &["'w'", "overflow"]);
    assert_contains(&new(&[], vec![plan("w", &[1], GgmlType::F32), plan("w", &[1], GgmlType::F32)]), &["'w'", "duplicate tensor name"]);
    assert_contains(&new(&meta(&[("k", MetaValue::U8(1)), ("k", MetaValue::U8(2))]), vec![]), &["duplicate metadata key 'k'"]);
    assert_contains(&new(&meta(&[("", MetaValue::U8(1))]), vec![]), &["empty metadata key"]);
    assert_contains(&new(&meta(&[("k", MetaValue::Arrays(vec![MetaValue::U8(1)]))]), vec![]), &["'k'", "array of arrays holds a u8"]);
    let mut deep = MetaValue::U8Array(vec![1]);
    for _ in 0..8 {
        deep = MetaValue::Arrays(vec![deep]);
    }
    assert_contains(&new(&meta(&[("k", deep)]), vec![]), &["'k'", "nested deeper than 8"]);
    // n_bytes reports a bad shape instead of panicking.
    assert_contains(&plan("w", &[33], GgmlType::Q8_0).n_bytes().unwrap_err().to_string(), &["'w'", "not a multiple of 32"]);

    let mut w = GgufWriter::new(Vec::new(), &[], vec![plan("a", &[2], GgmlType::F32)]).unwrap();
    assert_contains(&w.write_tensor("a", &[0; 7]).unwrap_err().to_string(), &["expected tensor 'a' of 8 bytes"]);
    assert_contains(&w.write_tensor("b", &[0; 8]).unwrap_err().to_string(), &["expected tensor 'a'"]);
    w.write_tensor("a", &[0; 8]).unwrap();
    assert_contains(&w.write_tensor("a", &[0; 8]).unwrap_err().to_string(), &["more tensors written than planned"]);
    let w = GgufWriter::new(Vec::new(), &[], vec![plan("a", &[2], GgmlType::F32)]).unwrap();
    assert_contains(&w.finish().unwrap_err().to_string(), &["0 of 1 planned tensors"]);
}

// ---------------------------------------------------------------- refusals of the reader

#[test]
fn refuses_bad_magic_and_versions() {
    let mut b = Raw::new().build(0);
    b[0] = b'X';
    assert_contains(&read_err(b), &["bad magic"]);
    for v in [0u32, 1, 4, 0x0300_0000] {
        let e = read_err(Raw { version: v, ..Raw::new() }.build(0));
        assert_contains(&e, &["unsupported GGUF version", &v.to_string()]);
    }
    assert_contains(&read_err(Raw { version: 0x0300_0000, ..Raw::new() }.build(0)), &["big-endian"]);
    assert!(GgufFile::from_bytes(Raw { version: 2, ..Raw::new() }.build(0)).is_ok());
}

#[test]
fn refuses_counts_and_lengths_that_cannot_fit() {
    let huge = |mut r: Raw, kv: bool| {
        if kv {
            r.n_kv = u64::MAX / 2;
        } else {
            r.n_tensors = 1 << 40;
        }
        read_err(r.build(0))
    };
    assert_contains(&huge(Raw::new(), true), &["metadata count", "cannot fit"]);
    assert_contains(&huge(Raw::new().kv(b"k", vt::UINT8, &[1]), false), &["tensor count 1099511627776 cannot fit"]);
    // A string that claims more bytes than are left, as key and as value.
    let mut b = Raw::new().kv(b"k", vt::UINT8, &[1]).build(0);
    b[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert_contains(&read_err(b), &["string length 4611686018427387904 runs past the end"]);
    let e = read_err(Raw::new().kv(b"k", vt::STRING, &(u64::MAX).to_le_bytes()).build(0));
    assert_contains(&e, &["metadata 'k'", "runs past the end"]);
    // Arrays of every item size, claiming 2^61 items.
    for item in [vt::UINT8, vt::UINT16, vt::UINT32, vt::UINT64, vt::BOOL, vt::STRING, vt::ARRAY] {
        let e = read_err(Raw::new().kv(b"k", vt::ARRAY, &arr(item, 1 << 61, &[])).build(64));
        assert_contains(&e, &["metadata 'k'", "2305843009213693952 items cannot fit"]);
    }
}

#[test]
fn refuses_unknown_value_types_and_bad_utf8() {
    assert_contains(&read_err(Raw::new().kv(b"k", 13, &[0; 8]).build(0)), &["'k'", "unknown GGUF value type 13"]);
    assert_contains(&read_err(Raw::new().kv(b"k", vt::ARRAY, &arr(99, 0, &[])).build(0)), &["'k'", "array of unknown GGUF value type 99"]);
    assert_contains(&read_err(Raw::new().kv(b"k\xff", vt::UINT8, &[1]).build(0)), &["metadata key is not valid UTF-8"]);
    assert_contains(&read_err(Raw::new().kv(b"k", vt::STRING, &lstr(b"\xc3")).build(0)), &["metadata 'k' is not valid UTF-8"]);
}

#[test]
fn refuses_arrays_nested_deeper_than_8() {
    // depth levels of array headers, the innermost an empty u8 array.
    // An array of one array is its header followed by the inner array.
    let nested = |depth: usize| {
        let v = [arr(vt::ARRAY, 1, &[]).repeat(depth - 1), arr(vt::UINT8, 0, &[])].concat();
        Raw::new().kv(b"k", vt::ARRAY, &v).build(0)
    };
    let f = GgufFile::from_bytes(nested(8)).unwrap();
    assert_eq!(rewrite(&f), nested(8));
    assert_contains(&read_err(nested(9)), &["'k'", "nested deeper than 8"]);
    // Deep enough to overflow the stack if the depth were not bounded.
    assert_contains(&read_err(nested(100_000)), &["nested deeper than 8"]);
}

#[test]
fn refuses_duplicate_and_empty_keys_like_ggml() {
    let e = read_err(Raw::new().kv(b"k", vt::UINT8, &[1]).kv(b"k", vt::UINT8, &[2]).build(0));
    assert_contains(&e, &["duplicate metadata key 'k'"]);
    assert_contains(&read_err(Raw::new().kv(b"", vt::UINT8, &[1]).build(0)), &["empty metadata key"]);
}

#[test]
fn refuses_bad_alignment() {
    assert_contains(
        &read_err(Raw::new().kv(b"general.alignment", vt::UINT64, &32u64.to_le_bytes()).build(0)),
        &["general.alignment must be a u32, found u64"],
    );
    assert_contains(
        &read_err(Raw::new().kv(b"general.alignment", vt::UINT32, &0u32.to_le_bytes()).build(0)),
        &["general.alignment 0 is not a power of two"],
    );
    assert_contains(
        &read_err(Raw::new().kv(b"general.alignment", vt::UINT32, &24u32.to_le_bytes()).build(0)),
        &["general.alignment 24 is not a power of two"],
    );
    let f = GgufFile::from_bytes(Raw::new().alignment(256).tensor("t", &[4], 0, 0).build(16)).unwrap();
    assert_eq!((f.alignment(), f.data_start()), (256, 256));
}

#[test]
fn duplicate_tensor_names_are_refused_and_an_empty_name_is_allowed_like_ggml() {
    let e = read_err(Raw::new().tensor("w", &[4], 0, 0).tensor("w", &[4], 0, 32).build(64));
    assert_contains(&e, &["Layer 'w'", "duplicate tensor name"]);
    let f = GgufFile::from_bytes(Raw::new().tensor("", &[4], 0, 0).build(16)).unwrap();
    assert_eq!(f.tensors[0].name, "");
}

#[test]
fn refuses_bad_dims_and_types() {
    let one = |ne: &[u64], ty: u32| read_err(Raw::new().tensor("w", ne, ty, 0).build(1024));
    assert_contains(&one(&[1, 1, 1, 1, 1], 0), &["Layer 'w'", "5 dimensions; ggml allows at most 4"]);
    assert_contains(&one(&[1 << 32, 1 << 32], 0), &["Layer 'w'", "overflow the element count"]);
    assert_contains(&one(&[1 << 63], 0), &["Layer 'w'", "beyond ggml's int64 range"]);
    assert_contains(&one(&[1 << 62], 0), &["Layer 'w'", "overflow the byte size"]);
    assert_contains(&one(&[48, 2], GgmlType::Q8_0.id()), &["Layer 'w'", "row length 48 is not a multiple of 32", "Q8_0"]);
    assert_contains(&one(&[256], 4), &["Layer 'w'", "unknown ggml type id 4"]);
    assert_contains(&one(&[256], 1000), &["Layer 'w'", "unknown ggml type id 1000"]);
    // A zero-element tensor is fine (ggml allows it), whatever its other dims.
    let f = GgufFile::from_bytes(Raw::new().tensor("z", &[0, 1 << 62], 0, 0).build(0)).unwrap();
    assert_eq!((f.tensors[0].len, f.tensors[0].n_elements()), (0, 0));
}

#[test]
fn refuses_offsets_that_are_misaligned_out_of_order_or_past_the_end() {
    let e = read_err(Raw::new().tensor("a", &[4], 0, 16).build(64));
    assert_contains(&e, &["Layer 'a'", "data offset 16 is not a multiple of the alignment 32"]);
    // A gap, and an overlap (ggml requires each offset to be the running padded size).
    let e = read_err(Raw::new().tensor("a", &[4], 0, 32).build(64));
    assert_contains(&e, &["Layer 'a'", "data offset 32, expected 0"]);
    let e = read_err(Raw::new().tensor("a", &[16], 0, 0).tensor("b", &[4], 0, 32).build(128));
    assert_contains(&e, &["Layer 'b'", "data offset 32, expected 64"]);
    let e = read_err(Raw::new().tensor("a", &[4], 0, 0).tensor("b", &[4], 0, u64::MAX - 31).build(64));
    assert_contains(&e, &["Layer 'b'", "expected 32"]);
    // Data past the end of the file, and a data section that starts past it.
    let e = read_err(Raw::new().tensor("a", &[4], 0, 0).tensor("b", &[1 << 40], 0, 32).build(64));
    assert_contains(&e, &["Layer 'b'", "runs past the end of the file"]);
    let mut b = Raw::new().tensor("a", &[0], 0, 0).build(0);
    b.truncate(b.len() - 1);
    assert_contains(&read_err(b), &["data section would start at"]);
}

// ---------------------------------------------------------------- importance matrices

fn imatrix_err(bytes: &[u8]) -> String {
    match Imatrix::from_bytes(bytes) {
        Ok(m) => panic!("a bad imatrix was accepted: {m:?}"),
        Err(e) => e.to_string(),
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A GGUF imatrix with our writer: the three metadata keys (minus `drop`), and per entry sums
/// (flat: the reader only uses their length) and counts of shape `[n_mat, 1]`.
fn imatrix_gguf(drop: &str, entries: &[(&str, Vec<f32>, Vec<f32>)]) -> Vec<u8> {
    let m: Vec<_> = meta(&[
        ("imatrix.datasets", MetaValue::StrArray(vec!["d".into()])),
        ("imatrix.chunk_count", MetaValue::U32(3)),
        ("imatrix.chunk_size", MetaValue::U32(512)),
    ])
    .into_iter()
    .filter(|(k, _)| k != drop)
    .collect();
    let mut tensors = vec![];
    for (name, sums, counts) in entries {
        tensors.push((plan(&format!("{name}.in_sum2"), &[sums.len()], GgmlType::F32), f32_bytes(sums)));
        tensors.push((plan(&format!("{name}.counts"), &[counts.len(), 1], GgmlType::F32), f32_bytes(counts)));
    }
    gguf_with(&m, tensors)
}

fn gguf_with(m: &[(String, MetaValue)], tensors: Vec<(TensorPlan, Vec<u8>)>) -> Vec<u8> {
    let mut w = GgufWriter::new(Vec::new(), m, tensors.iter().map(|(p, _)| p.clone()).collect()).unwrap();
    for (p, data) in &tensors {
        w.write_tensor(&p.name, data).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn imatrix_gguf_from_gguf_py_is_normalized_like_llama_quantize() {
    let m = Imatrix::from_bytes(&fixture("imatrix.gguf")).unwrap();
    assert!(!m.is_legacy);
    assert_eq!((m.chunk_count, m.chunk_size), (10, 512));
    assert_eq!(m.datasets, vec!["wiki.train.raw".to_string()]);
    assert_eq!(m.get("blk.0.attn_q.weight"), Some(&[1.0, 2.0, 3.0, 4.0][..]));
    // counts 2.5 → lround 3; 0 → the expert's values are 1.0; 4.4 → 4
    assert_eq!(m.get("blk.0.ffn_up_exps.weight"), Some(&[1.0, 2.0, 1.0, 1.0, 1.75, 2.25][..]));
    assert_eq!(m.entries.len(), 2);
    assert_eq!(m.get("missing"), None);
}

#[test]
fn imatrix_gguf_edge_counts() {
    // A negative count is treated as 0 (values 1.0); -2.5 rounds away from zero, like lround.
    // 0.5 rounds to 1 (so sums stay as they are); 0.49 rounds to 0.
    let b = imatrix_gguf("", &[("w", vec![3.0, 5.0, 7.0, 9.0], vec![-2.5, 0.5, 0.49, 2.0])]);
    let m = Imatrix::from_bytes(&b).unwrap();
    assert_eq!(m.get("w"), Some(&[1.0, 5.0, 1.0, 4.5][..]));
    // sums / count in f32: 1/3 rounded once.
    let m = Imatrix::from_bytes(&imatrix_gguf("", &[("w", vec![1.0], vec![3.0])])).unwrap();
    assert_eq!(m.get("w").unwrap()[0].to_bits(), (1.0f32 / 3.0).to_bits());
    // Tensors without either suffix are not entries.
    let m = Imatrix::from_bytes(&gguf_with(
        &meta(&[("imatrix.datasets", MetaValue::U32(1)), ("imatrix.chunk_count", MetaValue::U32(0)), ("imatrix.chunk_size", MetaValue::U32(1))]),
        vec![(plan("other", &[1], GgmlType::F32), f32_bytes(&[1.0]))],
    ))
    .unwrap();
    assert!(m.entries.is_empty() && m.datasets.is_empty(), "datasets of another type read as none, as in llama.cpp");
}

#[test]
fn imatrix_gguf_refusals() {
    for key in ["imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"] {
        assert_contains(&imatrix_err(&imatrix_gguf(key, &[("w", vec![1.0], vec![1.0])])), &["missing imatrix metadata", key]);
    }
    assert_contains(&imatrix_err(&imatrix_gguf("", &[])), &["no data"]);
    let m = meta(&[
        ("imatrix.datasets", MetaValue::StrArray(vec![])),
        ("imatrix.chunk_count", MetaValue::I32(3)),
        ("imatrix.chunk_size", MetaValue::U32(1)),
    ]);
    let e = imatrix_err(&gguf_with(&m, vec![(plan("w.in_sum2", &[1], GgmlType::F32), f32_bytes(&[1.0]))]));
    assert_contains(&e, &["imatrix.chunk_count must be a u32, found i32"]);

    let ok_meta = meta(&[
        ("imatrix.datasets", MetaValue::StrArray(vec![])),
        ("imatrix.chunk_count", MetaValue::U32(3)),
        ("imatrix.chunk_size", MetaValue::U32(1)),
    ]);
    let e = imatrix_err(&gguf_with(&ok_meta, vec![(plan("w.in_sum2", &[1], GgmlType::F32), f32_bytes(&[1.0]))]));
    assert_contains(&e, &["Layer 'w'", "sums (.in_sum2) without counts"]);
    let e = imatrix_err(&gguf_with(&ok_meta, vec![(plan("w.counts", &[1], GgmlType::F32), f32_bytes(&[1.0]))]));
    assert_contains(&e, &["Layer 'w'", "counts (.counts) without sums"]);
    let e = imatrix_err(&gguf_with(
        &ok_meta,
        vec![(plan("w.in_sum2", &[2], GgmlType::F16), vec![0; 4]), (plan("w.counts", &[1], GgmlType::F32), f32_bytes(&[1.0]))],
    ));
    assert_contains(&e, &["Layer 'w'", "'w.in_sum2' must be F32, found F16"]);

    assert_contains(
        &imatrix_err(&imatrix_gguf("", &[("w", vec![1.0, 2.0, 3.0], vec![1.0, 1.0])])),
        &["Layer 'w'", "3 imatrix sums are not a multiple of 2 counts"],
    );
    assert_contains(&imatrix_err(&imatrix_gguf("", &[("w", vec![], vec![])])), &["Layer 'w'", "not a multiple of 0 counts"]);
    for bad in [f32::NAN, f32::INFINITY, 1e19] {
        assert_contains(&imatrix_err(&imatrix_gguf("", &[("w", vec![1.0], vec![bad])])), &["Layer 'w'", "is not a finite integer within int64"]);
    }
    let e = imatrix_err(&imatrix_gguf("", &[("w", vec![1.0, f32::INFINITY], vec![1.0])]));
    assert_contains(&e, &["Layer 'w'", "non-finite value inf at index 1"]);
    // A NaN sum divided by a count (0.5 rounds to 1).
    let e = imatrix_err(&imatrix_gguf("", &[("w", vec![f32::NAN], vec![0.5])]));
    assert_contains(&e, &["non-finite value NaN"]);
    // Not even a GGUF file: GGUF errors are reported (the magic decides the format).
    assert_contains(&imatrix_err(b"GGUF\x01\0\0\0"), &["unsupported GGUF version 1"]);
}

#[test]
fn imatrix_legacy_is_normalized_like_llama_quantize() {
    let m = Imatrix::from_bytes(&fixture("imatrix.dat")).unwrap();
    assert!(m.is_legacy);
    assert_eq!((m.chunk_count, m.chunk_size), (10, 0));
    assert_eq!(m.datasets, vec!["wiki.train.raw".to_string()]);
    assert_eq!(m.get("blk.0.attn_q.weight"), Some(&[0.5, 1.5, 0.25][..])); // sums / ncall 4
    assert_eq!(m.get("blk.0.ffn_down.weight"), Some(&[3.5, -1.0][..])); // ncall 0: raw sums
}

/// A legacy file: entries (name, ncall, sums), then `trailer` bytes.
fn legacy(entries: &[(&[u8], i32, &[f32])], trailer: &[u8]) -> Vec<u8> {
    let mut b = (entries.len() as i32).to_le_bytes().to_vec();
    for (name, ncall, sums) in entries {
        b.extend((name.len() as i32).to_le_bytes());
        b.extend(*name);
        b.extend(ncall.to_le_bytes());
        b.extend((sums.len() as i32).to_le_bytes());
        b.extend(f32_bytes(sums));
    }
    b.extend(trailer);
    b
}

fn trailer(chunks: i32, dataset: &[u8]) -> Vec<u8> {
    [&chunks.to_le_bytes()[..], &(dataset.len() as i32).to_le_bytes(), dataset].concat()
}

#[test]
fn imatrix_legacy_details() {
    // No trailer; a negative ncall keeps the raw sums; a name is cut at its first NUL, and a
    // repeated name replaces the earlier entry (both as llama.cpp does).
    let m = Imatrix::from_bytes(&legacy(&[(b"a\0junk", 3, &[3.0, 6.0]), (b"b", -2, &[5.0]), (b"b", 2, &[5.0])], b"")).unwrap();
    assert_eq!(m.get("a"), Some(&[1.0, 2.0][..]));
    assert_eq!(m.get("b"), Some(&[2.5][..]));
    assert_eq!((m.chunk_count, m.datasets.len()), (0, 0));
    let m = Imatrix::from_bytes(&legacy(&[(b"b", -2, &[5.0])], b"")).unwrap();
    assert_eq!(m.get("b"), Some(&[5.0][..]));
    // A trailer with a chunk count only; with an empty dataset name; with a name.
    let m = Imatrix::from_bytes(&legacy(&[(b"a", 1, &[1.0])], &7i32.to_le_bytes())).unwrap();
    assert_eq!((m.chunk_count, m.datasets.len()), (7, 0));
    let m = Imatrix::from_bytes(&legacy(&[(b"a", 1, &[1.0])], &trailer(8, b""))).unwrap();
    assert_eq!((m.chunk_count, m.datasets.len()), (8, 0));
    let m = Imatrix::from_bytes(&legacy(&[(b"a", 1, &[1.0])], &trailer(9, b"set.txt"))).unwrap();
    assert_eq!((m.chunk_count, m.datasets.clone()), (9, vec!["set.txt".to_string()]));
    // ncall converted to float before the division (5 / 3 in f32).
    let m = Imatrix::from_bytes(&legacy(&[(b"a", 3, &[5.0])], b"")).unwrap();
    assert_eq!(m.get("a").unwrap()[0].to_bits(), (5.0f32 / 3.0).to_bits());
}

#[test]
fn imatrix_legacy_refusals() {
    assert_contains(&imatrix_err(&0i32.to_le_bytes()), &["no data", "entry count 0"]);
    assert_contains(&imatrix_err(&(-1i32).to_le_bytes()), &["no data"]);
    assert_contains(&imatrix_err(b"ab"), &["not an imatrix file"]);
    // Claims more entries than it holds.
    let mut b = legacy(&[(b"a", 1, &[1.0])], b"");
    b[..4].copy_from_slice(&1_000_000i32.to_le_bytes());
    assert_contains(&imatrix_err(&b), &["no name length for entry 2"]);
    let mut b = legacy(&[(b"a", 1, &[1.0])], b"");
    b[4..8].copy_from_slice(&(-5i32).to_le_bytes());
    assert_contains(&imatrix_err(&b), &["entry 1 has a negative name length -5"]);
    let mut b = legacy(&[(b"a", 1, &[1.0])], b"");
    b[4..8].copy_from_slice(&i32::MAX.to_le_bytes());
    assert_contains(&imatrix_err(&b), &["name of entry 1 (2147483647 bytes) runs past the end"]);
    let mut b = legacy(&[(b"a", 1, &[1.0])], b"");
    b[13..17].copy_from_slice(&0i32.to_le_bytes());
    assert_contains(&imatrix_err(&b), &["Layer 'a'", "0 values (needs at least 1)"]);
    b[13..17].copy_from_slice(&i32::MAX.to_le_bytes());
    assert_contains(&imatrix_err(&b), &["Layer 'a'", "2147483647 values run past the end"]);
    assert_contains(&imatrix_err(&legacy(&[(b"\xff", 1, &[1.0])], b"")), &["name of imatrix entry 1 is not valid UTF-8"]);
    // Every cut inside the entries is an error; so is a partial trailer.
    let full = fixture("imatrix.dat");
    let entries_end = full.len() - trailer(10, b"wiki.train.raw").len();
    for n in 0..entries_end {
        assert!(Imatrix::from_bytes(&full[..n]).is_err(), "a {n}-byte prefix was accepted");
    }
    for n in 1..4 {
        assert_contains(&imatrix_err(&full[..entries_end + n]), &["incomplete chunk count"]);
        assert_contains(&imatrix_err(&full[..entries_end + 4 + n]), &["incomplete dataset name length"]);
    }
    assert_contains(&imatrix_err(&full[..full.len() - 1]), &["dataset name of 14 bytes runs past the end"]);
    // Non-finite values after normalization.
    assert_contains(&imatrix_err(&legacy(&[(b"a", 0, &[f32::NAN])], b"")), &["Layer 'a'", "non-finite value NaN at index 0"]);
    assert_contains(&imatrix_err(&legacy(&[(b"a", 1, &[1.0, f32::NEG_INFINITY])], b"")), &["non-finite value -inf at index 1"]);
}

#[test]
fn imatrix_open_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("im.gguf");
    std::fs::write(&p, imatrix_gguf("imatrix.chunk_size", &[("w", vec![1.0], vec![1.0])])).unwrap();
    assert_contains(&Imatrix::open(&p).unwrap_err().to_string(), &["im.gguf", "missing imatrix metadata"]);
    let p = dir.path().join("im.dat");
    std::fs::write(&p, fixture("imatrix.dat")).unwrap();
    assert_eq!(Imatrix::open(&p).unwrap(), Imatrix::from_bytes(&fixture("imatrix.dat")).unwrap());
    assert!(Imatrix::open(&dir.path().join("nope")).unwrap_err().to_string().contains("nope"));
}
