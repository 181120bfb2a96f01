//! Fuzz target: the safetensors reader — a single file's header and data, and a sharded
//! checkpoint's `*.safetensors.index.json` — on any bytes, through the same `Source` the
//! converter uses. It must return a result, never panic, hang or allocate beyond the input's
//! size; every tensor it accepts must read as f32 with the element count its shape says.
//!
//! The first byte picks the case: even, the rest is a `.safetensors` file; odd, the rest is an
//! index beside one valid shard (`a.safetensors`, tensors `w` and `b`) and a file outside the
//! checkpoint's folder that an index must never reach.

use std::path::{Path, PathBuf};

use arrow_quant_v2::model::source::Source;

/// A scratch folder per process (AFL runs targets in parallel processes), made for one check
/// and removed after it (a panicking check, a finding, leaves it for inspection).
struct Scratch {
    base: PathBuf,
    single: PathBuf,
    sharded: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let base = std::env::temp_dir().join(format!("aq-fuzz-safetensors-{}", std::process::id()));
        let single = base.join("single");
        let sharded = base.join("sharded").join("ck");
        std::fs::create_dir_all(&single).unwrap();
        std::fs::create_dir_all(&sharded).unwrap();
        std::fs::write(sharded.join("a.safetensors"), shard()).unwrap();
        std::fs::write(base.join("sharded").join("outside.safetensors"), shard()).unwrap();
        Scratch { base, single, sharded }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

/// A valid two-tensor safetensors file.
fn shard() -> Vec<u8> {
    let header = br#"{"w":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[32,40]}}"#;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend((0..40u8).map(|i| i.wrapping_mul(37)));
    out
}

fn read_all(path: &Path) {
    let Ok(source) = Source::open(path) else { return };
    if let Source::Safetensors { ck, .. } = &source {
        let root = std::fs::canonicalize(path.parent().unwrap_or(path)).unwrap();
        for f in &ck.files {
            let f = std::fs::canonicalize(f).unwrap();
            assert!(f.starts_with(&root) || f.starts_with(std::fs::canonicalize(path).unwrap()), "{} escapes {}", f.display(), root.display());
        }
    }
    for (i, t) in source.tensors().iter().enumerate() {
        if let Ok(loaded) = source.load(i, true, i % 2 == 0) {
            let w = loaded.values().to_f32();
            assert_eq!(w.len(), t.n_elements(), "{}", t.name);
        }
    }
}

/// One input; panics (assertion failures included) are the findings.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let scratch = Scratch::new();
    let (single, sharded) = (&scratch.single, &scratch.sharded);
    if mode % 2 == 0 {
        let file = single.join("model.safetensors");
        std::fs::write(&file, rest).unwrap();
        read_all(&file);
    } else {
        let index = sharded.join("model.safetensors.index.json");
        std::fs::write(&index, rest).unwrap();
        read_all(&index);
    }
}
