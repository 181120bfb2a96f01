//! GGUF output: which type each tensor gets, the metadata written, and the encoding of one
//! tensor.
//!
//! * From a GGUF model (llama.cpp tensor names), the types are llama.cpp's mix for the file
//!   type ([`crate::gguf::mix`]), exactly as `llama-quantize` chooses them, and the metadata is
//!   the input's, with `general.quantization_version` and `general.file_type` set (and the
//!   importance-matrix keys added) as `llama-quantize` sets them.
//! * From a checkpoint (its own tensor names, e.g. a diffusion model for ComfyUI-GGUF or
//!   stable-diffusion.cpp), the keep rules decide what is quantized; quantized tensors get the
//!   mix's default type, or llama.cpp's fallback where a row does not fit its blocks.

use rayon::prelude::*;

use super::rules::{Action, Decision};
use super::source::{SourceTensor, Stored};
use crate::device::GgmlDevice;
use crate::error::{QuantError, Result};
use crate::gguf::imatrix::Imatrix;
use crate::gguf::mix::{self, FileType, MixOptions, ModelInfo, TensorDesc};
use crate::gguf::{MetaValue, QUANTIZATION_VERSION};
use crate::quant::ggml::{self, GgmlType};
use crate::quant::metrics::{rows_per_chunk, ErrorStats, Lanes};
use crate::quant::Values;

/// What happens to one tensor in a GGUF output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Written as stored in the (GGUF) source.
    Copy,
    /// Read as f32 and written as this type.
    Encode(GgmlType),
    /// Left out (not a float tensor).
    Skip,
}

#[derive(Clone, Debug)]
pub struct Choice {
    pub step: Step,
    pub reason: String,
}

impl Choice {
    /// The tensor's type in the output (`None`: left out).
    pub fn output_type(&self, t: &SourceTensor) -> Option<GgmlType> {
        match (&self.step, t.stored) {
            (Step::Encode(ty), _) => Some(*ty),
            (Step::Copy, Stored::Ggml(ty)) => Some(ty),
            _ => None,
        }
    }
}

/// llama.cpp's mix for a GGUF model's tensors.
pub fn plan_from_gguf(
    metadata: &[(String, MetaValue)],
    tensors: &[SourceTensor],
    opts: &MixOptions,
    warn: &mut dyn FnMut(&str),
) -> Result<Vec<Choice>> {
    let model = ModelInfo::from_metadata(metadata).unwrap_or_else(|e| {
        warn(&format!(
            "warning: {e}; choosing types without the model's layer and head counts (llama.cpp would refuse to load this file)"
        ));
        ModelInfo::unknown()
    });
    let descs: Vec<TensorDesc> = tensors
        .iter()
        .map(|t| match t.stored {
            Stored::Ggml(ty) => TensorDesc::from_shape(&t.name, &t.shape, ty),
            Stored::Safetensors(_) => unreachable!("a GGUF source holds GGUF tensors"),
        })
        .collect();
    let choices = mix::choose_types(&model, &descs, opts)?;
    Ok(choices
        .into_iter()
        .map(|c| Choice {
            step: if c.quantize { Step::Encode(c.ty) } else { Step::Copy },
            reason: c.note.unwrap_or_else(|| format!("{} default", opts.ftype)),
        })
        .collect())
}

/// The keep rules' decisions for a checkpoint, with the mix's default type (and llama.cpp's
/// fallback) for the tensors they quantize.
pub fn plan_from_checkpoint(tensors: &[SourceTensor], decisions: &[Decision], ftype: FileType) -> Result<Vec<Choice>> {
    tensors
        .iter()
        .zip(decisions)
        .map(|(t, d)| {
            let step = match d.action {
                Action::Skip => Step::Skip,
                Action::Keep(k) => Step::Encode(k),
                Action::Quantize => {
                    let desc = TensorDesc::from_shape(&t.name, &t.shape, GgmlType::F32);
                    let (ty, why) = mix::fallback(&desc, ftype.default_type())?;
                    if let Some(why) = why {
                        return Ok(Choice { step: Step::Encode(ty), reason: why });
                    }
                    Step::Encode(ty)
                }
            };
            Ok(Choice { step, reason: d.reason.clone() })
        })
        .collect()
}

/// Keys llama-quantize removes from the input's metadata (a split model becomes one file).
const SPLIT_KEYS: [&str; 3] = ["split.no", "split.count", "split.tensors.count"];

/// The output metadata of a GGUF → GGUF conversion, as llama-quantize writes it: the input's
/// keys in order, then `general.quantization_version` and `general.file_type` (ggml's
/// `gguf_set_val_*` removes a key and appends it), without the split keys, then the
/// importance-matrix keys. llama.cpp keeps at most 127 bytes of the file and dataset names.
pub fn metadata_from_gguf(input: &[(String, MetaValue)], ftype: FileType, imatrix: Option<(&str, &Imatrix)>) -> Vec<(String, MetaValue)> {
    let mut set: Vec<(String, MetaValue)> = vec![
        ("general.quantization_version".into(), MetaValue::U32(QUANTIZATION_VERSION)),
        ("general.file_type".into(), MetaValue::U32(ftype.id())),
    ];
    if let Some((path, m)) = imatrix {
        let truncate = |s: &str| {
            let mut end = s.len().min(127);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string()
        };
        set.push(("quantize.imatrix.file".into(), MetaValue::Str(truncate(path))));
        if let Some(d) = m.datasets.first() {
            set.push(("quantize.imatrix.dataset".into(), MetaValue::Str(truncate(d))));
        }
        set.push(("quantize.imatrix.entries_count".into(), MetaValue::U32(m.entries.len() as u32)));
        if m.chunk_count > 0 {
            set.push(("quantize.imatrix.chunks_count".into(), MetaValue::U32(m.chunk_count as u32)));
        }
    }
    let mut out: Vec<(String, MetaValue)> = input
        .iter()
        .filter(|(k, _)| !SPLIT_KEYS.contains(&k.as_str()) && !set.iter().any(|(s, _)| s == k))
        .cloned()
        .collect();
    out.extend(set);
    out
}

/// The importance row of a tensor, checked as llama-quantize checks it: `ne[0] * ne[2]`
/// values (one row per expert). `Ok(None)`: the matrix has no entry for it, or the entry is the
/// token embedding's of another size (llama.cpp ignores those).
pub fn imatrix_row<'a>(m: &'a Imatrix, t: &SourceTensor) -> Result<Option<&'a [f32]>> {
    let Some(row) = m.get(&t.name) else { return Ok(None) };
    let ne0 = t.shape.last().copied().unwrap_or(1);
    let ne2 = if t.shape.len() >= 3 { t.shape[t.shape.len() - 3] } else { 1 };
    if row.len() == ne0 * ne2 {
        return Ok(Some(row));
    }
    if t.name == "token_embd.weight" || t.name == "per_layer_token_embd.weight" {
        return Ok(None);
    }
    Err(QuantError::layer_value(
        &t.name,
        format!("the importance matrix has {} values for this tensor, which needs {ne0} x {ne2} = {} (is it for another model?)", row.len(), ne0 * ne2),
    ))
}

/// One tensor encoded as a ggml type, with what was measured on the way.
pub struct Encoded {
    pub data: Vec<u8>,
    /// Original against what `data` decodes to.
    pub stats: ErrorStats,
    /// The largest magnitude among the values (for the float16-range warning).
    pub amax: f32,
}

/// Elements per piece of a measured chunk: whole rows (at least one), small enough to stay in
/// L2 between the check, the encoding and the decoding.
const PIECE_ELEMENTS: usize = 1 << 16;

/// What one measured chunk found.
#[derive(Default)]
struct ChunkOut {
    stats: ErrorStats,
    amax: f32,
    /// The tensor-wide index of its first NaN/Inf.
    non_finite: Option<usize>,
    /// The tensor-wide index of its first block whose f16 scale overflowed.
    overflow: Option<usize>,
}

/// Values per GPU call of [`encode`] (64 Mi: 256 MiB as f32, many of the kernels' chunks).
const GPU_PIECE: usize = 1 << 26;

/// The GPU's part of [`encode`]: whole rows of at most `piece` values per call, converted from
/// the stored dtype on the way (an f16 tensor is never held as f32 whole), each importance
/// slice (`slice_rows` rows) with its own row of the importance matrix (the kernel takes one).
#[allow(clippy::too_many_arguments)] // encode's own state, handed over whole
fn encode_in_pieces(
    ty: GgmlType,
    values: Values<'_>,
    n_per_row: usize,
    slice_rows: Option<usize>,
    imatrix: Option<&[f32]>,
    dev: &GgmlDevice,
    piece: usize,
    data: &mut [u8],
) -> Result<()> {
    let n_rows = values.len() / n_per_row;
    let row_bytes = data.len() / n_rows;
    let rows_per_call = (piece / n_per_row).max(1);
    let slice = slice_rows.unwrap_or(n_rows);
    let mut buf = vec![0f32; rows_per_call.min(n_rows) * n_per_row];
    for s0 in (0..n_rows).step_by(slice) {
        let row = match (slice_rows, imatrix) {
            (Some(_), Some(m)) => Some(&m[s0 / slice * n_per_row..][..n_per_row]),
            _ => None,
        };
        let s1 = (s0 + slice).min(n_rows);
        for r0 in (s0..s1).step_by(rows_per_call) {
            let r1 = (r0 + rows_per_call).min(s1);
            let x = values.get_par(r0 * n_per_row..r1 * n_per_row, &mut buf);
            dev.quantize(ty, x, n_per_row, row, &mut data[r0 * row_bytes..r1 * row_bytes])?;
        }
    }
    Ok(())
}

/// Encodes one tensor (rows along its last axis) as `ty`, with its importance row (one slice of
/// `ne[0]` per 2-D matrix, as llama-quantize quantizes each expert of a 3-D tensor), and
/// measures the result against the values.
///
/// One pass: the measured chunks of [`crate::quant::metrics`] run in parallel, and within a
/// chunk each piece of rows is checked for NaN/Inf, encoded, decoded and compared while it is
/// in cache, converted from its stored dtype on the way. Errors are those of a whole-tensor
/// check: NaN/Inf anywhere first, then block scales that overflow f16 (which llama.cpp's
/// validation of the quantized data refuses too).
///
/// Where `dev` encodes `ty` on the GPU, the whole tensor is encoded there first (a chunk
/// holds many tensors' worth of blocks), and the chunks only check, decode and compare.
pub fn encode(name: &str, ty: GgmlType, values: Values<'_>, shape: &[usize], imatrix: Option<&[f32]>, dev: GgmlDevice) -> Result<Encoded> {
    let n_per_row = shape.last().copied().unwrap_or(1).max(1);
    let layer = |e: QuantError| QuantError::layer_value(name, e.to_string());
    let n = values.len();
    let mut data = vec![0u8; ggml::check_rows(ty, n, n_per_row, None).map_err(layer)?];
    if n == 0 {
        return Ok(Encoded { data, stats: ErrorStats::default(), amax: 0.0 });
    }
    let n_rows = n / n_per_row;
    let row_bytes = data.len() / n_rows;
    // Rows per importance slice (a 3-D tensor has one slice per expert).
    let slice_rows = match imatrix {
        Some(row) if ty.is_quantized() => {
            if !row.len().is_multiple_of(n_per_row) || row.len() / n_per_row == 0 || !n_rows.is_multiple_of(row.len() / n_per_row) {
                return Err(QuantError::layer_value(name, format!("an importance row of {} values does not fit rows of {n_per_row}", row.len())));
            }
            Some(n_rows / (row.len() / n_per_row))
        }
        _ => None,
    };
    let on_gpu = dev.on_gpu(ty, imatrix.is_some(), n);
    if on_gpu {
        encode_in_pieces(ty, values, n_per_row, slice_rows, imatrix, &dev, GPU_PIECE, &mut data)?;
    }
    let chunk_rows = rows_per_chunk(n_per_row);
    let piece_rows = (PIECE_ELEMENTS / n_per_row).clamp(1, chunk_rows);
    let chunks: Vec<ChunkOut> = crate::threads::install(|| {
        data.par_chunks_mut(chunk_rows * row_bytes)
            .enumerate()
            .map(|(c, out)| {
                let mut found = ChunkOut::default();
                let first_row = c * chunk_rows;
                let rows = out.len() / row_bytes;
                let mut lanes = Lanes::new(rows * n_per_row);
                let mut input = vec![0f32; piece_rows * n_per_row];
                let mut back = vec![0f32; piece_rows * n_per_row];
                for r0 in (0..rows).step_by(piece_rows) {
                    let r1 = (r0 + piece_rows).min(rows);
                    let at = (first_row + r0) * n_per_row;
                    let w = values.get(at..at + (r1 - r0) * n_per_row, &mut input);
                    let (amax, bad) = ggml::magnitude(w);
                    found.amax = found.amax.max(amax);
                    if bad {
                        found.non_finite = Some(at + w.iter().position(|v| !v.is_finite()).expect("the piece has one"));
                        return Ok(found);
                    }
                    let out = &mut out[r0 * row_bytes..r1 * row_bytes];
                    // Pieces end at importance-slice boundaries: each slice has its own row.
                    let mut r = r0;
                    while r < r1 && !on_gpu {
                        let (end, row) = match (slice_rows, imatrix) {
                            (Some(k), Some(m)) => {
                                let slice = (first_row + r) / k;
                                (((slice + 1) * k - first_row).min(r1), Some(&m[slice * n_per_row..(slice + 1) * n_per_row]))
                            }
                            _ => (r1, None),
                        };
                        ggml::quantize(ty, &w[(r - r0) * n_per_row..(end - r0) * n_per_row], n_per_row, row, &mut out[(r - r0) * row_bytes..(end - r0) * row_bytes])
                            .map_err(layer)?;
                        r = end;
                    }
                    if found.overflow.is_none() {
                        found.overflow = overflowing_scale(ty, out).map(|b| b + (first_row + r0) * row_bytes / ty.block().1);
                    }
                    let back = &mut back[..w.len()];
                    ggml::dequantize(ty, out, back).map_err(layer)?;
                    lanes.feed(w, back);
                }
                found.stats = lanes.finish();
                Ok(found)
            })
            .collect::<Result<_>>()
    })?;
    if let Some(i) = chunks.iter().find_map(|c| c.non_finite) {
        let mut one = [0f32];
        let value = values.get(i..i + 1, &mut one)[0];
        return Err(QuantError::NonFinite { layer: name.to_string(), index: i, value });
    }
    let amax = chunks.iter().fold(0f32, |m, c| m.max(c.amax));
    if let Some(at) = chunks.iter().find_map(|c| c.overflow) {
        return Err(QuantError::layer_value(
            name,
            format!("{ty} cannot hold these weights (|w| up to {amax:e}): the scale of block {at} overflows float16; keep the tensor in F32 (--keep)"),
        ));
    }
    let stats = chunks.iter().fold(ErrorStats::default(), |s, c| s.merge(c.stats));
    Ok(Encoded { data, stats, amax })
}

/// The first block whose f16 scale (or min) is infinite or NaN.
fn overflowing_scale(ty: GgmlType, data: &[u8]) -> Option<usize> {
    use GgmlType as G;
    let fields: &[usize] = match ty {
        G::Q4_0 | G::Q5_0 | G::Q8_0 => &[0],
        G::Q4_1 | G::Q5_1 | G::Q4_K | G::Q5_K => &[0, 2],
        G::Q2_K => &[80, 82],
        G::Q3_K => &[108],
        G::Q6_K => &[208],
        _ => return None,
    };
    let (_, bytes) = ty.block();
    data.chunks_exact(bytes).position(|b| fields.iter().any(|&at| u16::from_le_bytes([b[at], b[at + 1]]) & 0x7c00 == 0x7c00))
}

#[cfg(all(test, feature = "gpu"))]
mod tests {
    use super::*;
    use crate::device::Device;

    /// [`encode_in_pieces`] with pieces of a few rows (the converter's are 64 Mi values, too
    /// big for a test): f16 rows converted piece by piece, pieces that end inside an importance
    /// slice (three experts of five rows, pieces of two rows), the CPU's bytes.
    #[test]
    fn pieces_of_rows_give_the_cpus_bytes() {
        let gpu = match GgmlDevice::new(Device::Gpu) {
            Ok(d) => d,
            Err(e) if std::env::var("ARROW_QUANT_SKIP_GPU_TESTS").is_ok_and(|v| v == "1") => return eprintln!("skipping GPU test: {e}"),
            Err(e) => panic!("no GPU adapter for the GPU tests ({e}); set ARROW_QUANT_SKIP_GPU_TESTS=1 to skip"),
        };
        let (n_per_row, rows) = (512, 15);
        let halves: Vec<u8> = (0..rows * n_per_row).flat_map(|i| half::f16::from_f32(((i * 7919 % 1013) as f32 - 506.0) * 1.0e-3).to_le_bytes()).collect();
        let values = Values::F16(&halves);
        let mut x = vec![0f32; rows * n_per_row];
        values.get(0..rows * n_per_row, &mut x);
        let imatrix: Vec<f32> = (0..3 * n_per_row).map(|i| 0.1 + (i % 97) as f32 / 10.0).collect();
        for ty in [GgmlType::Q4_K, GgmlType::Q5_0] {
            for (slice_rows, w) in [(None, None), (Some(5), Some(&imatrix[..]))] {
                let bytes = ggml::check_rows(ty, x.len(), n_per_row, None).unwrap();
                let mut want = vec![0u8; bytes];
                for (e, out) in want.chunks_mut(bytes / 3).enumerate() {
                    let (xs, ws) = (&x[e * 5 * n_per_row..(e + 1) * 5 * n_per_row], w.map(|w| &w[e * n_per_row..(e + 1) * n_per_row]));
                    ggml::quantize(ty, xs, n_per_row, ws, out).unwrap();
                }
                let mut got = vec![0u8; bytes];
                match encode_in_pieces(ty, values, n_per_row, slice_rows, w, &gpu, 2 * n_per_row, &mut got) {
                    Err(QuantError::Unsupported(why)) if crate::gpu::GpuBackend::shared().unwrap().subnormal_flush().unwrap().is_some() => {
                        return eprintln!("refused on an adapter that flushes subnormals: {why}")
                    }
                    r => r.unwrap(),
                }
                assert!(got == want, "{ty} (importance slices: {slice_rows:?}): the pieces' bytes differ from the CPU's");
            }
        }
    }
}
