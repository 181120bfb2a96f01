//! A small GGUF reader (enough for `inspect` and `dequantize`): metadata of the simple types,
//! tensor infos, and the memory-mapped data section.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::{value_type as vt, GgmlType, MetaValue, ALIGNMENT, MAGIC};
use crate::error::{QuantError, Result};

#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    /// Row-major shape (outermost first): the stored dims reversed.
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute offset in the file.
    pub start: usize,
    pub len: usize,
}

pub struct GgufFile {
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<GgufTensor>,
    map: Mmap,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| {
            QuantError::value(format!("{}: truncated GGUF header (needs {n} bytes at offset {})", self.path.display(), self.pos))
        })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn skip_value(&mut self, ty: u32) -> Result<()> {
        let n = match ty {
            vt::UINT8 | vt::INT8 | vt::BOOL => 1,
            vt::UINT16 | vt::INT16 => 2,
            vt::UINT32 | vt::INT32 | vt::FLOAT32 => 4,
            vt::UINT64 | vt::INT64 | vt::FLOAT64 => 8,
            vt::STRING => {
                self.string()?;
                return Ok(());
            }
            vt::ARRAY => {
                let item = self.u32()?;
                let count = self.u64()?;
                for _ in 0..count {
                    self.skip_value(item)?;
                }
                return Ok(());
            }
            other => return Err(QuantError::value(format!("{}: unknown GGUF value type {other}", self.path.display()))),
        };
        self.take(n)?;
        Ok(())
    }
    fn value(&mut self) -> Result<MetaValue> {
        let ty = self.u32()?;
        Ok(match ty {
            vt::UINT32 => MetaValue::U32(self.u32()?),
            vt::UINT64 => MetaValue::U64(self.u64()?),
            vt::FLOAT32 => MetaValue::F32(f32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            vt::STRING => MetaValue::Str(self.string()?),
            vt::ARRAY => {
                let start = self.pos;
                let item = self.u32()?;
                if item == vt::STRING {
                    let n = self.u64()?;
                    let mut v = Vec::new();
                    for _ in 0..n {
                        v.push(self.string()?);
                    }
                    MetaValue::StrArray(v)
                } else {
                    self.pos = start;
                    self.skip_value(vt::ARRAY)?;
                    MetaValue::Other(vt::ARRAY)
                }
            }
            other => {
                self.skip_value(other)?;
                MetaValue::Other(other)
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| QuantError::Io { context: format!("cannot open {}", path.display()), source: e })?;
        // SAFETY: read-only mapping; concurrent truncation by another process is unsupported.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| QuantError::Io { context: format!("cannot map {}", path.display()), source: e })?;
        let mut c = Cursor { b: &map, pos: 0, path };
        if c.take(4)? != MAGIC {
            return Err(QuantError::value(format!("{}: not a GGUF file (bad magic)", path.display())));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(QuantError::value(format!("{}: unsupported GGUF version {version}", path.display())));
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        let mut metadata = Vec::new();
        for _ in 0..n_kv {
            let k = c.string()?;
            let v = c.value()?;
            metadata.push((k, v));
        }
        let alignment = metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| if let MetaValue::U32(a) = v { Some(*a as u64) } else { None })
            .unwrap_or(ALIGNMENT);
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()?;
            let mut dims = Vec::new();
            for _ in 0..n_dims {
                dims.push(c.u64()? as usize);
            }
            let ty_id = c.u32()?;
            let ty = GgmlType::from_id(ty_id)
                .ok_or_else(|| QuantError::layer_value(&name, format!("{}: ggml type {ty_id} is not supported by this reader", path.display())))?;
            let offset = c.u64()? as usize;
            dims.reverse();
            infos.push((name, dims, ty, offset));
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::new();
        for (name, shape, ty, offset) in infos {
            let len = ty.bytes_for(shape.iter().product());
            let start = data_start as usize + offset;
            if start + len > map.len() {
                return Err(QuantError::layer_value(&name, format!("{}: tensor data runs past the end of the file (truncated?)", path.display())));
            }
            tensors.push(GgufTensor { name, shape, ty, start, len });
        }
        Ok(Self { metadata, tensors, map })
    }

    pub fn data(&self, t: &GgufTensor) -> &[u8] {
        &self.map[t.start..t.start + t.len]
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}
