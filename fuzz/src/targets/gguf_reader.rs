//! Fuzz target: the GGUF reader, on any bytes. It must return a result, never panic, hang or
//! allocate beyond the input's size. Whatever it accepts, the writer must write back, and that
//! output must read and rewrite to the same bytes.

use arrow_quant_v2::gguf::{GgufFile, GgufWriter, TensorPlan};

fn rewrite(f: &GgufFile) -> Vec<u8> {
    let plan = f.tensors.iter().map(|t| TensorPlan { name: t.name.clone(), shape: t.shape.clone(), ty: t.ty }).collect();
    let mut w = GgufWriter::new(Vec::new(), &f.metadata, plan).expect("the writer takes what the reader accepts");
    for t in &f.tensors {
        w.write_tensor(&t.name, f.data(t)).expect("planned tensor");
    }
    w.finish().expect("all tensors written")
}

/// One input; panics (assertion failures included) are the findings.
pub fn check(data: &[u8]) {
    let Ok(f) = GgufFile::from_bytes(data.to_vec()) else { return };
    for (k, v) in &f.metadata {
        std::hint::black_box(format!("{k} = {v}"));
    }
    for t in &f.tensors {
        assert_eq!(f.data(t).len(), t.len);
    }
    // ggml lets a file without tensors end before its (padded) data section, so a huge
    // alignment costs nothing to read but gigabytes of padding to write: not a bug.
    if f.alignment() > 1 << 16 {
        return;
    }
    let once = rewrite(&f);
    let again = GgufFile::from_bytes(once.clone()).expect("our own output reads back");
    assert_eq!(rewrite(&again), once, "write → read → write changed the bytes");
}
