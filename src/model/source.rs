//! The model being converted: a safetensors checkpoint (single file, sharded, diffusers) or a
//! GGUF file, seen the same way by the converter — a list of tensors, each readable as f32
//! (or, for GGUF, as its stored bytes, to copy it unchanged).

use std::path::{Path, PathBuf};

use super::safetensors_reader::{source_files, Checkpoint, TensorBytes, TensorDtype};
use crate::error::{QuantError, Result};
use crate::gguf::reader::GgufFile;
use crate::gguf::MetaValue;
use crate::quant::ggml::{self, GgmlType};
use crate::quant::Values;

/// How a source tensor is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A safetensors dtype.
    Safetensors(TensorDtype),
    /// A GGUF tensor type.
    Ggml(GgmlType),
}

impl Stored {
    pub fn name(self) -> String {
        match self {
            Stored::Safetensors(d) => d.name(),
            Stored::Ggml(t) => t.name().to_string(),
        }
    }

    /// Plain floats: readable as f32 without a requantization.
    pub fn is_float(self) -> bool {
        match self {
            Stored::Safetensors(d) => d.is_float(),
            Stored::Ggml(t) => t.is_float(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SourceTensor {
    pub name: String,
    /// Row-major, outermost first.
    pub shape: Vec<usize>,
    pub stored: Stored,
    /// Bytes of its data in the source.
    pub bytes: u64,
}

impl SourceTensor {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A tensor's data, held while the converter works on it.
pub enum Loaded<'a> {
    /// Safetensors: its own mapping of the tensor's bytes.
    Mapped(TensorBytes),
    /// GGUF float data, inside the mapped file.
    InFile { bytes: &'a [u8], ty: GgmlType },
    /// A quantized GGUF tensor expanded to f32 (`--allow-requantize`).
    Decoded(Vec<f32>),
}

impl Loaded<'_> {
    /// The values in their stored dtype, read as f32 by the kernels.
    pub fn values(&self) -> Values<'_> {
        match self {
            Loaded::Mapped(b) => b.values(),
            Loaded::InFile { bytes, ty: GgmlType::F16 } => Values::F16(bytes),
            Loaded::InFile { bytes, ty: GgmlType::BF16 } => Values::BF16(bytes),
            Loaded::InFile { bytes, .. } => Values::f32_bytes(bytes),
            Loaded::Decoded(v) => Values::F32(v),
        }
    }
}

pub enum Source {
    Safetensors { ck: Checkpoint, tensors: Vec<SourceTensor> },
    Gguf { file: GgufFile, tensors: Vec<SourceTensor> },
}

/// Whether `path` holds a GGUF file (by its magic; a missing file is not).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
        && &magic == crate::gguf::MAGIC
}

impl Source {
    /// A GGUF file, or a safetensors checkpoint (file, sharded folder or diffusers folder).
    pub fn open(path: &Path) -> Result<Self> {
        if is_gguf(path) {
            let file = GgufFile::open(path)?;
            let tensors = file
                .tensors
                .iter()
                .map(|t| SourceTensor { name: t.name.clone(), shape: t.shape.clone(), stored: Stored::Ggml(t.ty), bytes: t.len as u64 })
                .collect();
            return Ok(Source::Gguf { file, tensors });
        }
        let ck = Checkpoint::open(path)?;
        let tensors = ck
            .tensors
            .iter()
            .map(|t| SourceTensor { name: t.name.clone(), shape: t.shape.clone(), stored: Stored::Safetensors(t.dtype), bytes: t.len })
            .collect();
        Ok(Source::Safetensors { ck, tensors })
    }

    pub fn tensors(&self) -> &[SourceTensor] {
        match self {
            Source::Safetensors { tensors, .. } | Source::Gguf { tensors, .. } => tensors,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.tensors().iter().map(|t| t.bytes).sum()
    }

    /// The GGUF metadata, for a GGUF source.
    pub fn gguf_metadata(&self) -> Option<&[(String, MetaValue)]> {
        match self {
            Source::Gguf { file, .. } => Some(&file.metadata),
            Source::Safetensors { .. } => None,
        }
    }

    /// The files the model came from, relative to its root.
    pub fn files(&self, path: &Path) -> Vec<String> {
        match self {
            Source::Safetensors { ck, .. } => source_files(ck),
            Source::Gguf { .. } => vec![path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()],
        }
    }

    /// The paths of the files the model is read from.
    pub fn paths(&self, path: &Path) -> Vec<PathBuf> {
        match self {
            Source::Safetensors { ck, .. } => ck.files.clone(),
            Source::Gguf { .. } => vec![path.to_path_buf()],
        }
    }

    /// Tensor `i`'s stored bytes, to copy (GGUF only: safetensors tensors are always
    /// re-encoded); `prefetch` as for [`Source::load`].
    pub fn load_raw(&self, i: usize, prefetch: bool) -> Result<&[u8]> {
        match self {
            Source::Gguf { file, .. } => {
                if prefetch {
                    self.queue_next(i);
                    file.prefetch(&file.tensors[i]);
                }
                Ok(file.data(&file.tensors[i]))
            }
            Source::Safetensors { .. } => Err(QuantError::value("raw copies are only made from GGUF sources")),
        }
    }

    /// Starts reading the tensor after `i` from disk without waiting, so that its reads queue
    /// up behind `i`'s and the disk never waits for us between tensors.
    fn queue_next(&self, i: usize) {
        match self {
            Source::Safetensors { ck, .. } if i + 1 < ck.tensors.len() => ck.will_need(i + 1),
            Source::Gguf { file, .. } if i + 1 < file.tensors.len() => file.will_need(&file.tensors[i + 1]),
            _ => {}
        }
    }

    /// Tensor `i`'s data, ready to be read as f32. A quantized GGUF tensor is expanded as
    /// ggml's `dequantize_row_*` would (`dequantize` must be set: it is llama-quantize's
    /// `--allow-requantize`). With `prefetch`, the data is brought into memory now (read from
    /// disk if it has to be), so that whoever reads it next does not wait on page faults.
    pub fn load(&self, i: usize, dequantize: bool, prefetch: bool) -> Result<Loaded<'_>> {
        let t = &self.tensors()[i];
        match self {
            Source::Safetensors { ck, .. } => {
                if !t.stored.is_float() {
                    return Err(QuantError::layer_value(&t.name, format!("{} tensors cannot be converted to float", t.stored.name())));
                }
                let bytes = ck.read(i)?;
                if prefetch {
                    self.queue_next(i);
                    bytes.prefetch();
                }
                Ok(Loaded::Mapped(bytes))
            }
            Source::Gguf { file, .. } => {
                let Stored::Ggml(ty) = t.stored else { unreachable!() };
                if !ty.can_decode() {
                    return Err(QuantError::layer_value(&t.name, format!("{ty} tensors cannot be converted to float")));
                }
                let info = &file.tensors[i];
                if ty.is_float() {
                    if prefetch {
                        self.queue_next(i);
                        file.prefetch(info);
                    }
                    return Ok(Loaded::InFile { bytes: file.data(info), ty });
                }
                if !dequantize {
                    return Err(QuantError::layer_value(
                        &t.name,
                        format!("the tensor is already quantized ({ty}); requantizing loses quality, pass --allow-requantize (allow_requantize=True) to do it anyway"),
                    ));
                }
                let mut out = vec![0f32; t.n_elements()];
                ggml::dequantize(ty, file.data(info), &mut out).map_err(|e| QuantError::layer_value(&t.name, e.to_string()))?;
                Ok(Loaded::Decoded(out))
            }
        }
    }
}
