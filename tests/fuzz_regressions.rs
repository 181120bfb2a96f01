//! Replays the fuzz corpus as ordinary tests: every seed and every input that ever crashed or hung
//! a fuzz target (`fuzz/regressions/<target>/`) goes through the target's own `check`, the function the
//! AFL++ binaries run. A panic here is a fuzz finding come back.

#[path = "../fuzz/src/targets/mod.rs"]
mod targets;

use std::path::Path;

/// A replay that takes longer than this is a hang the fuzzers found, come back.
const HANG_SECONDS: f64 = 20.0;

fn replay(seeds: &str, target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in [root.join("seeds").join(seeds), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        files.sort();
        for file in files {
            if file.extension().is_some_and(|e| e == "py" || e == "md") {
                continue;
            }
            let data = std::fs::read(&file).unwrap();
            let started = std::time::Instant::now();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target} fails on {}", file.display());
            // Not a speed test: a bound on hangs. The slowest input here replays in about 0.3 s;
            // the hang it guards against took minutes.
            let took = started.elapsed().as_secs_f64();
            assert!(took < HANG_SECONDS, "{target} took {took:.1} s on {} (a hang come back?)", file.display());
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for {target}");
}

#[test]
fn gguf_reader() {
    replay("gguf", "gguf_reader", targets::gguf_reader::check);
}

#[test]
fn imatrix_reader() {
    replay("imatrix", "imatrix_reader", targets::imatrix_reader::check);
}

#[test]
fn safetensors_reader() {
    replay("safetensors", "safetensors_reader", targets::safetensors_reader::check);
}

#[test]
fn quantized_reader() {
    replay("quantized", "quantized_reader", targets::quantized_reader::check);
}

#[test]
fn arrow_stream() {
    replay("arrow_stream", "arrow_stream", targets::arrow_stream::check);
}
