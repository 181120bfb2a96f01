//! A streaming GGUF writer: the header (metadata and every tensor's info) is written first from
//! the planned types and shapes, then each tensor's data in plan order, so no tensor has to wait
//! in memory for the others.
//!
//! It writes what the reader accepts and nothing else (non-empty unique keys, unique tensor
//! names, at most 4 dims, whole blocks per row, arrays nested at most [`MAX_ARRAY_DEPTH`] deep),
//! so every file it writes can be read back: by us always, and by ggml unless it holds arrays of
//! arrays (gguf-py's extension) or tensor names of 64 bytes or more (llama.cpp's limit).

use std::collections::HashSet;
use std::io::Write;

use super::{align_to, alignment_of, tensor_bytes, value_type as vt, GgmlType, MetaValue, MAGIC, MAX_ARRAY_DEPTH, VERSION};
use crate::error::{QuantError, Result};

/// One tensor as it will be stored.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    pub name: String,
    /// Row-major shape (outermost first), as in the checkpoint. Written reversed; an empty shape
    /// (a scalar) is written as one dim of 1, as ggml writes it.
    pub shape: Vec<usize>,
    pub ty: GgmlType,
}

impl TensorPlan {
    /// The dims as stored, innermost first (ggml's `ne`).
    pub fn ne(&self) -> Vec<u64> {
        if self.shape.is_empty() {
            vec![1]
        } else {
            self.shape.iter().rev().map(|&d| d as u64).collect()
        }
    }

    /// Bytes of the tensor's data; an error for a shape ggml cannot store (too many dims, a row
    /// that does not fill whole blocks, sizes that overflow).
    pub fn n_bytes(&self) -> Result<usize> {
        tensor_bytes(self.ty, &self.ne()).map_err(|e| QuantError::layer_value(&self.name, e))
    }
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    w.extend_from_slice(&(s.len() as u64).to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

/// The value's bytes without its type tag (an array: item type, count, items).
fn put_value(w: &mut Vec<u8>, v: &MetaValue, key: &str, depth: usize) -> Result<()> {
    fn items<T, const N: usize>(w: &mut Vec<u8>, item: u32, xs: &[T], le: impl Fn(&T) -> [u8; N]) {
        w.extend_from_slice(&item.to_le_bytes());
        w.extend_from_slice(&(xs.len() as u64).to_le_bytes());
        for x in xs {
            w.extend_from_slice(&le(x));
        }
    }
    if v.item_type_id().is_some() && depth > MAX_ARRAY_DEPTH {
        return Err(QuantError::value(format!("metadata '{key}' has arrays nested deeper than {MAX_ARRAY_DEPTH}")));
    }
    match v {
        MetaValue::U8(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I8(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => w.push(u8::from(*x)),
        MetaValue::Str(s) => put_str(w, s),
        MetaValue::U64(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U8Array(xs) => items(w, vt::UINT8, xs, |x| x.to_le_bytes()),
        MetaValue::I8Array(xs) => items(w, vt::INT8, xs, |x| x.to_le_bytes()),
        MetaValue::U16Array(xs) => items(w, vt::UINT16, xs, |x| x.to_le_bytes()),
        MetaValue::I16Array(xs) => items(w, vt::INT16, xs, |x| x.to_le_bytes()),
        MetaValue::U32Array(xs) => items(w, vt::UINT32, xs, |x| x.to_le_bytes()),
        MetaValue::I32Array(xs) => items(w, vt::INT32, xs, |x| x.to_le_bytes()),
        MetaValue::F32Array(xs) => items(w, vt::FLOAT32, xs, |x| x.to_le_bytes()),
        MetaValue::BoolArray(xs) => items(w, vt::BOOL, xs, |&x| [u8::from(x)]),
        MetaValue::U64Array(xs) => items(w, vt::UINT64, xs, |x| x.to_le_bytes()),
        MetaValue::I64Array(xs) => items(w, vt::INT64, xs, |x| x.to_le_bytes()),
        MetaValue::F64Array(xs) => items(w, vt::FLOAT64, xs, |x| x.to_le_bytes()),
        MetaValue::StrArray(xs) => {
            w.extend_from_slice(&vt::STRING.to_le_bytes());
            w.extend_from_slice(&(xs.len() as u64).to_le_bytes());
            for s in xs {
                put_str(w, s);
            }
        }
        MetaValue::Arrays(xs) => {
            w.extend_from_slice(&vt::ARRAY.to_le_bytes());
            w.extend_from_slice(&(xs.len() as u64).to_le_bytes());
            for x in xs {
                if x.item_type_id().is_none() {
                    return Err(QuantError::value(format!("metadata '{key}': an array of arrays holds a {}", x.type_name())));
                }
                put_value(w, x, key, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// Writes GGUF to `out`: [`GgufWriter::new`] writes the header, [`GgufWriter::write_tensor`]
/// each tensor's bytes in plan order, [`GgufWriter::finish`] checks that all were written.
pub struct GgufWriter<W: Write> {
    out: W,
    plan: Vec<TensorPlan>,
    /// Data bytes of each planned tensor.
    sizes: Vec<usize>,
    alignment: u64,
    next: usize,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header. The data alignment is the metadata's `general.alignment` (a u32 power
    /// of two), or 32 without one, so a rewritten file keeps its input's alignment.
    pub fn new(mut out: W, metadata: &[(String, MetaValue)], plan: Vec<TensorPlan>) -> Result<Self> {
        let alignment = alignment_of(metadata).map_err(QuantError::value)?;
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(plan.len() as u64).to_le_bytes());
        h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        let mut keys = HashSet::new();
        for (k, v) in metadata {
            if k.is_empty() {
                return Err(QuantError::value("empty metadata key"));
            }
            if !keys.insert(k.as_str()) {
                return Err(QuantError::value(format!("duplicate metadata key '{k}'")));
            }
            put_str(&mut h, k);
            h.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut h, v, k, 1)?;
        }
        let mut names = HashSet::new();
        let mut sizes = Vec::with_capacity(plan.len());
        let mut offset = 0u64;
        for t in &plan {
            if !names.insert(t.name.as_str()) {
                return Err(QuantError::layer_value(&t.name, "duplicate tensor name"));
            }
            let n_bytes = t.n_bytes()?;
            let ne = t.ne();
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(ne.len() as u32).to_le_bytes());
            for d in ne {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset = offset
                .checked_add(n_bytes as u64)
                .and_then(|end| align_to(end, alignment))
                .filter(|o| usize::try_from(*o).is_ok())
                .ok_or_else(|| QuantError::layer_value(&t.name, "data offsets overflow"))?;
            sizes.push(n_bytes);
        }
        h.resize(align_to(h.len() as u64, alignment).expect("header fits memory") as usize, 0);
        out.write_all(&h).map_err(|e| QuantError::Io { context: "cannot write the GGUF header".into(), source: e })?;
        Ok(Self { out, plan, sizes, alignment, next: 0 })
    }

    pub fn plan(&self) -> &[TensorPlan] {
        &self.plan
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Writes the data of the next planned tensor (its exact byte count), then the padding.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let t = self.plan.get(self.next).ok_or_else(|| QuantError::layer_value(name, "more tensors written than planned"))?;
        let n_bytes = self.sizes[self.next];
        if t.name != name || n_bytes != data.len() {
            return Err(QuantError::layer_value(name, format!("expected tensor '{}' of {n_bytes} bytes next, got {} bytes", t.name, data.len())));
        }
        let padding = (align_to(n_bytes as u64, self.alignment).expect("checked in new") - n_bytes as u64) as usize;
        let io = |e| QuantError::Io { context: format!("cannot write tensor '{name}'"), source: e };
        self.out.write_all(data).map_err(io)?;
        self.out.write_all(&vec![0u8; padding]).map_err(io)?;
        self.next += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<W> {
        if self.next != self.plan.len() {
            return Err(QuantError::value(format!("{} of {} planned tensors were written", self.next, self.plan.len())));
        }
        self.out.flush().map_err(|e| QuantError::Io { context: "cannot write the GGUF file".into(), source: e })?;
        Ok(self.out)
    }
}
