//! A streaming GGUF writer: the header (metadata and every tensor's info) is written first from
//! the planned types and shapes, then each tensor's data in plan order, so no tensor has to wait
//! in memory for the others.

use std::io::Write;

use super::{pad, value_type as vt, GgmlType, MetaValue, MAGIC, VERSION};
use crate::error::{QuantError, Result};

/// One tensor as it will be stored.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    pub name: String,
    /// Row-major shape (outermost first), as in the checkpoint. Written reversed.
    pub shape: Vec<usize>,
    pub ty: GgmlType,
}

impl TensorPlan {
    pub fn n_bytes(&self) -> usize {
        self.ty.bytes_for(self.shape.iter().product())
    }
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    w.extend_from_slice(&(s.len() as u64).to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

fn put_value(w: &mut Vec<u8>, v: &MetaValue) -> Result<()> {
    match v {
        MetaValue::U32(x) => {
            w.extend_from_slice(&vt::UINT32.to_le_bytes());
            w.extend_from_slice(&x.to_le_bytes());
        }
        MetaValue::U64(x) => {
            w.extend_from_slice(&vt::UINT64.to_le_bytes());
            w.extend_from_slice(&x.to_le_bytes());
        }
        MetaValue::F32(x) => {
            w.extend_from_slice(&vt::FLOAT32.to_le_bytes());
            w.extend_from_slice(&x.to_le_bytes());
        }
        MetaValue::Str(s) => {
            w.extend_from_slice(&vt::STRING.to_le_bytes());
            put_str(w, s);
        }
        MetaValue::StrArray(items) => {
            w.extend_from_slice(&vt::ARRAY.to_le_bytes());
            w.extend_from_slice(&vt::STRING.to_le_bytes());
            w.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for s in items {
                put_str(w, s);
            }
        }
        MetaValue::Other(t) => return Err(QuantError::value(format!("cannot write a GGUF metadata value of type {t}"))),
    }
    Ok(())
}

/// Writes GGUF to `out`: [`GgufWriter::new`] writes the header, [`GgufWriter::write_tensor`]
/// each tensor's bytes in plan order, [`GgufWriter::finish`] checks that all were written.
pub struct GgufWriter<W: Write> {
    out: W,
    plan: Vec<TensorPlan>,
    next: usize,
}

impl<W: Write> GgufWriter<W> {
    pub fn new(mut out: W, metadata: &[(String, MetaValue)], plan: Vec<TensorPlan>) -> Result<Self> {
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(plan.len() as u64).to_le_bytes());
        h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut h, k);
            put_value(&mut h, v)?;
        }
        let mut offset = 0u64;
        for t in &plan {
            let row = t.shape.last().copied().unwrap_or(1);
            let (bs, _) = t.ty.block();
            if row % bs != 0 {
                return Err(QuantError::layer_value(&t.name, format!("row length {row} is not a multiple of {bs}, which {} needs", t.ty.name())));
            }
            put_str(&mut h, &t.name);
            let dims: Vec<usize> = if t.shape.is_empty() { vec![1] } else { t.shape.iter().rev().copied().collect() };
            h.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                h.extend_from_slice(&(d as u64).to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset += pad(t.n_bytes() as u64);
        }
        h.resize(pad(h.len() as u64) as usize, 0);
        out.write_all(&h).map_err(|e| QuantError::Io { context: "cannot write the GGUF header".into(), source: e })?;
        Ok(Self { out, plan, next: 0 })
    }

    pub fn plan(&self) -> &[TensorPlan] {
        &self.plan
    }

    /// Writes the data of the next planned tensor (its exact byte count), then the padding.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let t = self.plan.get(self.next).ok_or_else(|| QuantError::layer_value(name, "more tensors written than planned"))?;
        if t.name != name || t.n_bytes() != data.len() {
            return Err(QuantError::layer_value(
                name,
                format!("expected tensor '{}' of {} bytes next, got {} bytes", t.name, t.n_bytes(), data.len()),
            ));
        }
        let padding = (pad(data.len() as u64) - data.len() as u64) as usize;
        let io = |e| QuantError::Io { context: format!("cannot write tensor '{name}'"), source: e };
        self.out.write_all(data).map_err(io)?;
        self.out.write_all(&[0u8; 32][..padding]).map_err(io)?;
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
