//! Fuzz target: reading a quantized model file back (Arrow IPC or Parquet, compressed or not),
//! as `arrow-quant inspect`/`dequantize` and Python's `read_quantized` do, on any bytes. It must
//! return a result, never panic or crash; every tensor it lists must decode to the element count
//! its shape says, and only after its sizes were checked.

use std::path::PathBuf;
use std::sync::OnceLock;

use arrow_quant_v2::model::quantized::QuantFile;

fn scratch() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| std::env::temp_dir().join(format!("aq-fuzz-quantized-{}.arrow", std::process::id())))
}

/// Removes the scratch file when the check ends (a panicking check, a finding, leaves it for
/// inspection). A file per process would otherwise stay behind after every run.
struct Remove<'a>(&'a PathBuf);

impl Drop for Remove<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(self.0);
        }
    }
}

/// One input; panics (assertion failures included) are the findings.
pub fn check(data: &[u8]) {
    // GGUF files take the GGUF reader, fuzzed by its own target.
    if data.starts_with(b"GGUF") {
        return;
    }
    let path = scratch();
    std::fs::write(path, data).unwrap();
    let _remove = Remove(path);
    let Ok(q) = QuantFile::open(path) else { return };
    std::hint::black_box(q.metadata());
    for (i, e) in q.entries().iter().enumerate() {
        if let Ok(v) = q.decode(i) {
            assert_eq!(v.len(), e.n_elements(), "{}", e.name);
        }
    }
}
