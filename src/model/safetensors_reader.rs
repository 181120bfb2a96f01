//! Reading `.safetensors` checkpoints tensor by tensor.
//!
//! A checkpoint is one file, a folder of shards listed by a `*.safetensors.index.json`, or a
//! diffusers-style folder whose sub-folders (`unet/`, `transformer/`, `text_encoder/`…) are each
//! one of the former; tensors of a sub-folder are named `"{sub}/{name}"`.
//!
//! Only the headers are read up front (and checked: offsets inside the file, no overlaps, byte
//! lengths that match dtype × shape, dtypes we know). Each tensor's bytes are then memory-mapped
//! on their own when asked for and unmapped when dropped, so the resident memory of a whole
//! conversion is about one tensor plus a fixed working set, whatever the checkpoint's size.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};
use safetensors::Dtype;
use serde_json::Value;

use crate::error::{QuantError, Result};
use crate::quant::Values;

/// The largest header we accept (the safetensors crate uses the same limit).
const MAX_HEADER: u64 = 100_000_000;

/// Element types of a checkpoint tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorDtype {
    F32,
    F16,
    BF16,
    F64,
    /// A dtype we carry in the listing but do not convert (integers, booleans, fp8…). Such
    /// tensors are reported and skipped.
    Other(Dtype),
}

impl TensorDtype {
    fn from_safetensors(d: Dtype) -> Self {
        match d {
            Dtype::F32 => Self::F32,
            Dtype::F16 => Self::F16,
            Dtype::BF16 => Self::BF16,
            Dtype::F64 => Self::F64,
            other => Self::Other(other),
        }
    }

    pub fn is_float(self) -> bool {
        !matches!(self, Self::Other(_))
    }

    /// Bits per element.
    pub fn bits(self) -> usize {
        match self {
            Self::F32 => 32,
            Self::F16 | Self::BF16 => 16,
            Self::F64 => 64,
            Self::Other(d) => d.bitsize(),
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::F32 => "F32".into(),
            Self::F16 => "F16".into(),
            Self::BF16 => "BF16".into(),
            Self::F64 => "F64".into(),
            Self::Other(d) => format!("{d:?}"),
        }
    }
}

/// Where one tensor lives.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// The name used in outputs (with the sub-folder prefix of a diffusers folder).
    pub name: String,
    pub dtype: TensorDtype,
    pub shape: Vec<usize>,
    /// Index into [`Checkpoint::files`].
    pub file: usize,
    /// Absolute byte offset of the tensor's data in its file.
    pub start: u64,
    pub len: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The headers of every file of a checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub root: PathBuf,
    pub files: Vec<PathBuf>,
    /// In file order, then data-offset order.
    pub tensors: Vec<TensorInfo>,
    /// `__metadata__` of each file, merged (later files do not override earlier keys).
    pub metadata: BTreeMap<String, String>,
}

/// The shard `file` named by `index`, which must lie inside the index's folder: a plain
/// relative path (no `..`, no root), and no link out of the folder either.
fn shard_path(index: &Path, dir: &Path, file: &str) -> Result<PathBuf> {
    use std::path::Component;
    let outside = || invalid(index, format!("names shard '{file}', which is not inside the checkpoint's folder"));
    let rel = Path::new(file);
    if file.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(outside());
    }
    let shard = dir.join(rel);
    if let (Ok(real_dir), Ok(real_shard)) = (dir.canonicalize(), shard.canonicalize()) {
        if !real_shard.starts_with(&real_dir) {
            return Err(outside());
        }
    }
    Ok(shard)
}

fn io(context: impl Into<String>, source: std::io::Error) -> QuantError {
    QuantError::Io { context: context.into(), source }
}

fn invalid(file: &Path, message: impl std::fmt::Display) -> QuantError {
    QuantError::value(format!("{}: {message}", file.display()))
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(format!("cannot list {}", dir.display()), e))? {
        let path = entry.map_err(|e| io(format!("cannot list {}", dir.display()), e))?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "safetensors") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn index_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(format!("cannot list {}", dir.display()), e))? {
        let path = entry.map_err(|e| io(format!("cannot list {}", dir.display()), e))?.path();
        if path.is_file() && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".safetensors.index.json")) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

impl Checkpoint {
    /// Opens a `.safetensors` file, a `*.safetensors.index.json`, a folder of shards or a
    /// diffusers-style folder. Reads and checks every header; reads no tensor data.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| io(format!("cannot open checkpoint {}", path.display()), e))?;
        let mut ck = Checkpoint { root: path.to_path_buf(), files: Vec::new(), tensors: Vec::new(), metadata: BTreeMap::new() };
        if meta.is_file() {
            if path.to_string_lossy().ends_with(".index.json") {
                ck.add_index(path, "")?;
            } else {
                ck.add_file(path, "", None)?;
            }
        } else if !ck.add_folder(path, "")? {
            // A diffusers-style folder: every sub-folder that holds a checkpoint is a component.
            let mut subs: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| io(format!("cannot list {}", path.display()), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            subs.sort();
            for sub in subs {
                let prefix = format!("{}/", sub.file_name().unwrap_or_default().to_string_lossy());
                ck.add_folder(&sub, &prefix)?;
            }
            if ck.files.is_empty() {
                return Err(QuantError::value(format!(
                    "{}: no .safetensors file, *.safetensors.index.json, or sub-folder holding them was found",
                    path.display()
                )));
            }
        }
        let mut seen = HashSet::new();
        for t in &ck.tensors {
            if !seen.insert(t.name.as_str()) {
                return Err(QuantError::value(format!(
                    "{}: tensor '{}' appears in more than one file (last: {})",
                    path.display(),
                    t.name,
                    ck.files[t.file].display()
                )));
            }
        }
        Ok(ck)
    }

    /// Adds the checkpoint held directly in `dir`; false when there is none.
    fn add_folder(&mut self, dir: &Path, prefix: &str) -> Result<bool> {
        let indexes = index_files(dir)?;
        if let Some(index) = indexes.first() {
            if indexes.len() > 1 {
                return Err(QuantError::value(format!(
                    "{}: several *.safetensors.index.json files ({}); pass the one to use",
                    dir.display(),
                    indexes.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect::<Vec<_>>().join(", ")
                )));
            }
            self.add_index(index, prefix)?;
            return Ok(true);
        }
        let files = safetensors_files(dir)?;
        for f in &files {
            self.add_file(f, prefix, None)?;
        }
        Ok(!files.is_empty())
    }

    fn add_index(&mut self, index: &Path, prefix: &str) -> Result<()> {
        let text = std::fs::read_to_string(index).map_err(|e| io(format!("cannot read index {}", index.display()), e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| invalid(index, format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid(index, "has no \"weight_map\" object"))?;
        // shard file -> tensor names it must hold
        let mut shards: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| invalid(index, format!("weight_map entry '{name}' is not a file name")))?;
            shards.entry(file.to_string()).or_default().insert(name.clone());
        }
        let dir = index.parent().unwrap_or(Path::new("."));
        for (file, names) in shards {
            let shard = shard_path(index, dir, &file)?;
            if !shard.is_file() {
                return Err(io(
                    format!("{}: shard '{file}' listed in the index (for tensor '{}') is missing", index.display(), names.iter().min().unwrap()),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
            self.add_file(&shard, prefix, Some(&names))?;
        }
        Ok(())
    }

    /// Reads and checks one file's header. `expected`: names the index says this shard holds.
    fn add_file(&mut self, path: &Path, prefix: &str, expected: Option<&HashSet<String>>) -> Result<()> {
        let mut f = File::open(path).map_err(|e| io(format!("cannot open {}", path.display()), e))?;
        let file_len = f.metadata().map_err(|e| io(format!("cannot stat {}", path.display()), e))?.len();
        if file_len < 8 {
            return Err(invalid(path, format!("truncated: {file_len} bytes, too short for the 8-byte header length")));
        }
        let mut n = [0u8; 8];
        f.read_exact(&mut n).map_err(|e| io(format!("cannot read {}", path.display()), e))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER {
            return Err(invalid(path, format!("header length {n} is larger than the {MAX_HEADER}-byte limit (corrupt file?)")));
        }
        if 8 + n > file_len {
            return Err(invalid(path, format!("truncated: header length {n} runs past the end of the {file_len}-byte file")));
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header).map_err(|e| io(format!("cannot read the header of {}", path.display()), e))?;
        let header = std::str::from_utf8(&header).map_err(|e| invalid(path, format!("header is not UTF-8: {e}")))?;
        let json: Value = serde_json::from_str(header.trim_end_matches(' ')).map_err(|e| invalid(path, format!("header is not valid JSON: {e}")))?;
        let obj = json.as_object().ok_or_else(|| invalid(path, "header is not a JSON object"))?;
        let data_start = 8 + n;
        let data_len = file_len - data_start;
        let file_idx = self.files.len();

        let mut infos = Vec::new();
        for (name, entry) in obj {
            if name == "__metadata__" {
                if let Some(m) = entry.as_object() {
                    for (k, v) in m {
                        if let Some(v) = v.as_str() {
                            self.metadata.entry(k.clone()).or_insert_with(|| v.to_string());
                        }
                    }
                }
                continue;
            }
            let bad = |m: String| invalid(path, format!("tensor '{name}': {m}"));
            let dtype_v = entry.get("dtype").ok_or_else(|| bad("has no dtype".into()))?;
            let dtype: Dtype = serde_json::from_value(dtype_v.clone()).map_err(|_| bad(format!("unknown dtype {dtype_v}")))?;
            let dtype = TensorDtype::from_safetensors(dtype);
            let shape: Vec<usize> = entry
                .get("shape")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("has no shape list".into()))?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("shape must be a list of non-negative integers".into()))?;
            let offs = entry
                .get("data_offsets")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
                .ok_or_else(|| bad("data_offsets must be two non-negative integers".into()))?;
            let (begin, end) = offs;
            if begin > end {
                return Err(bad(format!("data_offsets [{begin}, {end}] are reversed")));
            }
            if end > data_len {
                return Err(bad(format!(
                    "data_offsets [{begin}, {end}] run past the end of the data ({data_len} bytes): the file is truncated or the header corrupt"
                )));
            }
            let n_elem = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            let want = n_elem.and_then(|n| n.checked_mul(dtype.bits() as u64)).map(|b| b.div_ceil(8));
            if want != Some(end - begin) {
                return Err(bad(format!(
                    "holds {} bytes, but dtype {} and shape {shape:?} need {}",
                    end - begin,
                    dtype.name(),
                    want.map(|w| w.to_string()).unwrap_or_else(|| "more than 2^64".into())
                )));
            }
            infos.push(TensorInfo {
                name: format!("{prefix}{name}"),
                dtype,
                shape,
                file: file_idx,
                start: data_start + begin,
                len: end - begin,
            });
        }
        infos.sort_by_key(|t| (t.start, t.len));
        for pair in infos.windows(2) {
            if pair[1].start < pair[0].start + pair[0].len {
                return Err(invalid(
                    path,
                    format!("tensors '{}' and '{}' overlap in the data section", pair[0].name, pair[1].name),
                ));
            }
        }
        if let Some(expected) = expected {
            let present: HashSet<&str> = infos.iter().map(|t| &t.name[prefix.len()..]).collect();
            if let Some(missing) = expected.iter().filter(|n| !present.contains(n.as_str())).min() {
                return Err(invalid(path, format!("the index says this shard holds tensor '{missing}', but it does not")));
            }
        }
        self.files.push(path.to_path_buf());
        self.tensors.extend(infos);
        Ok(())
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.len).sum()
    }

    /// Asks the kernel to start reading tensor `i` from disk now, without waiting
    /// (`posix_fadvise(WILLNEED)`), so that the disk has work queued while the tensors before
    /// it are being read and encoded. Advice only.
    pub fn will_need(&self, i: usize) {
        let t = &self.tensors[i];
        if let Ok(file) = File::open(&self.files[t.file]) {
            crate::readahead::will_need_file(&file, t.start, t.len);
        }
    }

    /// Maps the bytes of tensor `i`. The mapping is released when the result is dropped.
    pub fn read(&self, i: usize) -> Result<TensorBytes> {
        let t = &self.tensors[i];
        let path = &self.files[t.file];
        if t.len == 0 {
            return Ok(TensorBytes { map: None, skip: 0, len: 0, dtype: t.dtype });
        }
        let file = File::open(path).map_err(|e| io(format!("cannot open {} (tensor '{}')", path.display(), t.name), e))?;
        let file_len = file.metadata().map_err(|e| io(format!("cannot stat {}", path.display()), e))?.len();
        if t.start + t.len > file_len {
            return Err(invalid(path, format!("tensor '{}': the file was truncated after it was opened", t.name)));
        }
        let page = page_size() as u64;
        let aligned = t.start / page * page;
        let skip = (t.start - aligned) as usize;
        // SAFETY: the file is opened read-only; as with every memory-mapped reader, a concurrent
        // truncation of the file by another process would fault. That is documented as unsupported.
        let map = unsafe { MmapOptions::new().offset(aligned).len(skip + t.len as usize).map(&file) }
            .map_err(|e| io(format!("cannot map tensor '{}' of {}", t.name, path.display()), e))?;
        Ok(TensorBytes { map: Some(map), skip, len: t.len as usize, dtype: t.dtype })
    }
}

fn page_size() -> usize {
    // Every platform we build for maps at 4 KiB granularity or a divisor of 64 KiB; 64 KiB is
    // a multiple of every page size in use, so offsets aligned to it are always valid.
    65536
}

/// The mapped bytes of one tensor.
pub struct TensorBytes {
    map: Option<Mmap>,
    skip: usize,
    len: usize,
    dtype: TensorDtype,
}

impl TensorBytes {
    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Some(m) => &m[self.skip..self.skip + self.len],
            None => &[],
        }
    }

    pub fn dtype(&self) -> TensorDtype {
        self.dtype
    }

    /// The values in their stored dtype, read as f32 where used (integer dtypes read as none).
    pub fn values(&self) -> Values<'_> {
        let b = self.bytes();
        match self.dtype {
            TensorDtype::F32 => Values::f32_bytes(b),
            TensorDtype::F16 => Values::F16(b),
            TensorDtype::BF16 => Values::BF16(b),
            TensorDtype::F64 => Values::F64(b),
            TensorDtype::Other(_) => Values::F32(&[]),
        }
    }

    /// Brings the bytes into memory now (see [`crate::readahead::populate`]).
    pub fn prefetch(&self) {
        if let Some(m) = &self.map {
            crate::readahead::populate(m, self.skip, self.len);
        }
    }
}

/// Names of the tensors grouped by file, for metadata.
pub fn source_files(ck: &Checkpoint) -> Vec<String> {
    let root = if ck.root.is_dir() { ck.root.as_path() } else { ck.root.parent().unwrap_or(Path::new("")) };
    ck.files
        .iter()
        .map(|f| f.strip_prefix(root).unwrap_or(f).to_string_lossy().into_owned())
        .collect()
}
