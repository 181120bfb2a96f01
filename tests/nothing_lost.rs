//! Nothing is lost: an output that is the input is refused before anything is written, an
//! existing output that is not a regular file is never replaced, every output is complete
//! before any is renamed (and a failure leaves the old files and no temporary file), a
//! sharded index cannot reach outside its folder, and options out of range are refused.

mod model_common;

use std::path::Path;

use arrow_quant_v2::model::atomic::AtomicFile;
use arrow_quant_v2::model::safetensors_reader::Checkpoint;
use arrow_quant_v2::model::{convert, NoProgress, Options, QuantType};
use arrow_quant_v2::QuantError;
use model_common::*;

fn model(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("m.safetensors");
    write(&src, &small_model());
    src
}

fn err(r: Result<impl Sized, QuantError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Files in `dir` whose name says they are temporary.
fn partials(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-"))
        .collect()
}

#[test]
fn output_equal_to_the_input_is_refused_under_any_path() {
    let dir = tempfile::tempdir().unwrap();
    let src = model(dir.path());
    let before = std::fs::read(&src).unwrap();
    std::os::unix::fs::symlink(&src, dir.path().join("link.safetensors")).unwrap();
    std::fs::hard_link(&src, dir.path().join("hard.safetensors")).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    for out in ["m.safetensors", "link.safetensors", "hard.safetensors", "sub/../m.safetensors"] {
        let dst = dir.path().join(out);
        let msg = err(convert(&src, &dst, &Options::default(), &mut NoProgress));
        assert!(msg.contains("is the input file"), "{out}: {msg}");
        let msg = err(convert(&src, &dir.path().join("other.arrow"), &Options { report: Some(dst), ..Options::default() }, &mut NoProgress));
        assert!(msg.contains("is the input file"), "report {out}: {msg}");
    }
    assert_eq!(std::fs::read(&src).unwrap(), before);
    assert!(partials(dir.path()).is_empty());
    assert!(!dir.path().join("other.arrow").exists());
}

#[test]
fn gguf_output_over_its_gguf_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = model(dir.path());
    let gguf = dir.path().join("m.gguf");
    let q8 = Options { qtype: Some("q8_0".parse::<QuantType>().unwrap()), ..Options::default() };
    convert(&src, &gguf, &q8, &mut NoProgress).unwrap();
    let before = std::fs::read(&gguf).unwrap();
    let msg = err(convert(&gguf, &gguf, &Options { allow_requantize: true, ..q8.clone() }, &mut NoProgress));
    assert!(msg.contains("is the input file"), "{msg}");
    assert_eq!(std::fs::read(&gguf).unwrap(), before);
}

#[test]
fn an_output_that_is_not_a_regular_file_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let src = model(dir.path());
    let out_dir = dir.path().join("out.arrow");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(out_dir.join("keep"), b"x").unwrap();
    let msg = err(convert(&src, &out_dir, &Options::default(), &mut NoProgress));
    assert!(msg.contains("not a regular file"), "{msg}");
    assert!(out_dir.join("keep").exists());

    let fifo = dir.path().join("fifo.arrow");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let msg = err(convert(&src, &fifo, &Options::default(), &mut NoProgress));
    assert!(msg.contains("not a regular file"), "{msg}");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(partials(dir.path()).is_empty());
}

/// An output in a folder that does not exist: the error names the output and the folder (not
/// only the temporary file it would have been written to first), and nothing is created.
#[test]
fn an_output_in_a_missing_folder_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let src = model(dir.path());
    let dst = dir.path().join("no-such-dir").join("out.arrow");
    let msg = err(convert(&src, &dst, &Options::default(), &mut NoProgress));
    assert!(msg.contains(&format!("cannot write {}", dst.display())) && msg.contains("no-such-dir does not exist"), "{msg}");
    assert!(!dir.path().join("no-such-dir").exists());
}

#[test]
fn a_report_that_cannot_be_written_leaves_the_old_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let src = model(dir.path());
    let dst = dir.path().join("m.arrow");
    std::fs::write(&dst, b"the old output").unwrap();
    let report = dir.path().join("report.arrow");
    std::fs::create_dir(&report).unwrap();
    let msg = err(convert(&src, &dst, &Options { report: Some(report.clone()), ..Options::default() }, &mut NoProgress));
    assert!(msg.contains("report.arrow") && msg.contains("not a regular file"), "{msg}");
    assert_eq!(std::fs::read(&dst).unwrap(), b"the old output");
    assert!(partials(dir.path()).is_empty(), "{:?}", partials(dir.path()));

    // With a writable report path both appear, the report readable as Arrow IPC.
    std::fs::remove_dir(&report).unwrap();
    convert(&src, &dst, &Options { report: Some(report.clone()), ..Options::default() }, &mut NoProgress).unwrap();
    assert_ne!(std::fs::read(&dst).unwrap(), b"the old output");
    assert!(std::fs::read(&report).unwrap().starts_with(b"ARROW1"));
}

#[test]
fn a_failed_rename_removes_the_temporary_file_and_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("out.bin");
    let mut f = AtomicFile::create(&dst).unwrap();
    std::io::Write::write_all(&mut f, b"new").unwrap();
    let staged = f.finish().unwrap();
    // Something else puts a non-empty folder at the destination before the rename.
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(dst.join("keep"), b"x").unwrap();
    assert!(staged.commit().is_err());
    assert!(dst.join("keep").exists());
    assert!(partials(dir.path()).is_empty(), "{:?}", partials(dir.path()));
}

fn sharded(dir: &Path, shard: &str) -> String {
    let model = small_model();
    write(&dir.join("a.safetensors"), &model);
    let map: serde_json::Map<String, serde_json::Value> = model.iter().map(|t| (t.name.to_string(), shard.into())).collect();
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::json!({ "weight_map": map }).to_string()).unwrap();
    match Checkpoint::open(dir) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_sharded_index_may_only_name_files_inside_its_folder() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("ck");
    std::fs::create_dir(&dir).unwrap();
    write(&outer.path().join("outside.safetensors"), &small_model());
    std::os::unix::fs::symlink(outer.path().join("outside.safetensors"), dir.join("link.safetensors")).unwrap();
    let abs = outer.path().join("outside.safetensors").to_string_lossy().into_owned();
    for shard in ["../outside.safetensors", abs.as_str(), "link.safetensors", "sub/../../outside.safetensors", ""] {
        let msg = sharded(&dir, shard);
        assert!(msg.contains("not inside the checkpoint's folder"), "{shard}: {msg}");
    }
    assert_eq!(sharded(&dir, "a.safetensors"), "");
    assert_eq!(sharded(&dir, "./a.safetensors"), "");
}

#[test]
fn options_out_of_range_say_what_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let src = model(dir.path());
    let dst = dir.path().join("m.arrow");
    for m in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        let msg = err(convert(&src, &dst, &Options { min_cosine: Some(m), ..Options::default() }, &mut NoProgress));
        assert!(msg.contains("min_cosine must be in (0, 1]"), "{m}: {msg}");
    }
    for g in [0, -8, 7, 1 << 33] {
        let msg = err(arrow_quant_v2::QuantConfig::new(arrow_quant_v2::BitWidth::B4, g));
        assert!(msg.contains("Must be a positive multiple of 8, at most 4294967288"), "{g}: {msg}");
    }
    assert!(!dst.exists());
}
