//! llama.cpp's quantization mixes: which ggml type each tensor of a model gets for a file type
//! such as `Q4_K_M`, exactly as `llama-quantize` chooses it.
//!
//! A llama.cpp *file type* (`LLAMA_FTYPE_MOSTLY_Q4_K_M`, …) does not name one tensor type: it
//! names a default type plus rules that give some tensors more bits (the token embedding and
//! output, `attn_v` of some layers, the first and last `ffn_down`s, …), leave others as they are
//! (norms, 1-D tensors, BERT's position and token-type embeddings) and fall back to a block
//! format that fits when a row is not a whole number of blocks. This module is a port of those
//! rules from llama.cpp b10605 (`src/llama-quant.cpp`: `tensor_allows_quantization`,
//! `tensor_get_category`, `llama_tensor_get_type_impl`, `llama_tensor_get_type`,
//! `tensor_type_fallback`, `llama_ftype_get_default_type`, `init_quantize_state_counters`).
//! `tests/llama_mix.rs` checks it against goldens recorded from the real `llama-quantize`.
//!
//! Two things make the result depend on more than a tensor's own name and shape:
//! * **Visiting order.** Some rules count tensors (`attn_v` number i of n, `ffn_down` number i).
//!   llama.cpp visits tensors in the order of its loader's `weights_map`: sorted by the layer
//!   number parsed from a `blk.N.` prefix (tensors without one first, as layer -1), then by name
//!   (byte order, so `blk.0.attn_k` < `blk.0.attn_output` < `blk.0.attn_q` < `blk.0.attn_v`).
//!   [`choose_types`] visits in that order and returns results in input order.
//! * **The model.** `{arch}.block_count`, the head counts of layer 0 (grouped-query attention),
//!   the expert count and llama.cpp's "70B" model type ([`ModelInfo`]).
//!
//! Only the branches reachable from the file types of [`FileType`] are ported; the rules for
//! llama.cpp's IQ*, TQ*, Q2_K_S and MXFP4_MOE file types are left out (their conditions are
//! noted where they would sit).

use std::fmt;
use std::str::FromStr;

use super::MetaValue;
use crate::error::{QuantError, Result};
use crate::quant::ggml::GgmlType;

/// llama.cpp's `LLAMA_MAX_LAYERS`.
pub const MAX_LAYERS: u32 = 512;
/// llama.cpp's `LLAMA_MAX_EXPERTS`.
pub const MAX_EXPERTS: u32 = 1024;

// ------------------------------------------------------------------------------------------------
// File types
// ------------------------------------------------------------------------------------------------

/// A llama.cpp file type (`enum llama_ftype`) that this crate can produce: a default tensor
/// type plus llama.cpp's per-tensor rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum FileType {
    /// `LLAMA_FTYPE_ALL_F32`
    F32,
    /// `LLAMA_FTYPE_MOSTLY_F16`
    F16,
    /// `LLAMA_FTYPE_MOSTLY_BF16`
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

impl FileType {
    /// Every file type, in `general.file_type` id order.
    pub const ALL: &'static [FileType] = &[
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q8_0,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q2_K,
        Self::Q3_K_S,
        Self::Q3_K_M,
        Self::Q3_K_L,
        Self::Q4_K_S,
        Self::Q4_K_M,
        Self::Q5_K_S,
        Self::Q5_K_M,
        Self::Q6_K,
        Self::BF16,
    ];

    /// Aliases `llama-quantize` accepts besides the names (its `QUANT_OPTIONS` table).
    pub const ALIASES: &'static [(&'static str, FileType)] =
        &[("Q3_K", Self::Q3_K_M), ("Q4_K", Self::Q4_K_M), ("Q5_K", Self::Q5_K_M)];

    /// The `general.file_type` value (`LLAMA_FTYPE_*`).
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 7,
            Self::Q5_0 => 8,
            Self::Q5_1 => 9,
            Self::Q2_K => 10,
            Self::Q3_K_S => 11,
            Self::Q3_K_M => 12,
            Self::Q3_K_L => 13,
            Self::Q4_K_S => 14,
            Self::Q4_K_M => 15,
            Self::Q5_K_S => 16,
            Self::Q5_K_M => 17,
            Self::Q6_K => 18,
            Self::BF16 => 32,
        }
    }

    /// The file type of a `general.file_type` value, if it is one of ours.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The name `llama-quantize` takes and prints (`Q4_K_M`, `F16`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2_K => "Q2_K",
            Self::Q3_K_S => "Q3_K_S",
            Self::Q3_K_M => "Q3_K_M",
            Self::Q3_K_L => "Q3_K_L",
            Self::Q4_K_S => "Q4_K_S",
            Self::Q4_K_M => "Q4_K_M",
            Self::Q5_K_S => "Q5_K_S",
            Self::Q5_K_M => "Q5_K_M",
            Self::Q6_K => "Q6_K",
        }
    }

    /// The tensor type most tensors get (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
            Self::BF16 => GgmlType::BF16,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4_1 => GgmlType::Q4_1,
            Self::Q5_0 => GgmlType::Q5_0,
            Self::Q5_1 => GgmlType::Q5_1,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q2_K => GgmlType::Q2_K,
            Self::Q3_K_S | Self::Q3_K_M | Self::Q3_K_L => GgmlType::Q3_K,
            Self::Q4_K_S | Self::Q4_K_M => GgmlType::Q4_K,
            Self::Q5_K_S | Self::Q5_K_M => GgmlType::Q5_K,
            Self::Q6_K => GgmlType::Q6_K,
        }
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FileType {
    type Err = QuantError;

    /// A file type by name, case-insensitively (`q4_k_m`, `Q8_0`, `f16`), or one of the aliases
    /// `q3_k`, `q4_k`, `q5_k` (the `_M` mixes, as in `llama-quantize`).
    fn from_str(s: &str) -> Result<Self> {
        if let Some(t) = Self::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(s)) {
            return Ok(t);
        }
        if let Some(&(_, t)) = Self::ALIASES.iter().find(|(a, _)| a.eq_ignore_ascii_case(s)) {
            return Ok(t);
        }
        let names: Vec<String> = Self::ALL.iter().map(|t| t.name().to_ascii_lowercase()).collect();
        Err(QuantError::value(format!(
            "Unknown llama.cpp file type '{s}'. Known: {} (aliases: q3_k, q4_k, q5_k)",
            names.join(", ")
        )))
    }
}

// ------------------------------------------------------------------------------------------------
// The model
// ------------------------------------------------------------------------------------------------

/// What llama.cpp's rules need to know about a model (its `llama_hparams` and model type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// `general.architecture` (`llama`, `bert`, `falcon`, …); empty when unknown.
    pub arch: String,
    /// `{arch}.block_count`: llama.cpp's `n_layer_all`, the n of the per-layer `ffn_*` rules.
    pub n_layer: u32,
    /// `{arch}.attention.head_count` of layer 0 (0 when absent).
    pub n_head: u32,
    /// `{arch}.attention.head_count_kv` of layer 0; `n_head` when absent.
    pub n_head_kv: u32,
    /// `{arch}.expert_count` (0 when absent).
    pub n_expert: u32,
    /// llama.cpp's model type is `LLM_TYPE_70B` (see [`ModelInfo::new`]).
    pub is_70b: bool,
}

impl ModelInfo {
    /// A model of a llama.cpp architecture. `is_70b` follows the architectures' own
    /// `load_arch_hparams`: `llama` with 80 layers, not 8 experts and `n_head != n_head_kv`
    /// (with equal counts it is 65B); `qwen2`, `deci` and `olmo` with 80 layers; `jais2` with 68.
    pub fn new(arch: &str, n_layer: u32, n_head: u32, n_head_kv: u32, n_expert: u32) -> Self {
        let is_70b = match arch {
            "llama" => n_expert != 8 && n_layer == 80 && n_head != n_head_kv,
            "qwen2" | "deci" | "olmo" => n_layer == 80,
            "jais2" => n_layer == 68,
            _ => false,
        };
        Self { arch: arch.to_string(), n_layer, n_head, n_head_kv, n_expert, is_70b }
    }

    /// For inputs that are not llama.cpp models (e.g. safetensors diffusion checkpoints): no
    /// architecture, no layers, no heads. Every rule still applies by name and shape; tensors
    /// that match none of llama.cpp's categories get the default type and its fallback.
    pub fn unknown() -> Self {
        Self::new("", 0, 0, 0, 0)
    }

    /// Reads the keys llama.cpp's `load_hparams` reads, with its checks: `general.architecture`
    /// (string), `{arch}.block_count` (u32, required, 1..=512), `{arch}.attention.head_count`
    /// and `{arch}.attention.head_count_kv` (u32, or an array of u32/i32 with one entry per
    /// layer; optional; kv defaults to head_count) and `{arch}.expert_count` (u32, optional).
    pub fn from_metadata(metadata: &[(String, MetaValue)]) -> Result<Self> {
        let get = |key: &str| metadata.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v);
        let arch = match get("general.architecture") {
            Some(v) => meta::string(v).ok_or_else(|| QuantError::value("general.architecture is not a string"))?,
            None => return Err(QuantError::value("key not found in model: general.architecture")),
        };
        let key = |suffix: &str| format!("{arch}.{suffix}");

        let block_count = key("block_count");
        let n_layer = match get(&block_count) {
            Some(v) => meta::scalar_u32(&block_count, v)?,
            None => return Err(QuantError::value(format!("key not found in model: {block_count}"))),
        };
        if n_layer == 0 || n_layer > MAX_LAYERS {
            return Err(QuantError::value(format!("{block_count} = {n_layer}: must be in 1..={MAX_LAYERS}")));
        }
        let expert_count = key("expert_count");
        let n_expert = match get(&expert_count) {
            Some(v) => meta::scalar_u32(&expert_count, v)?,
            None => 0,
        };
        if n_expert > MAX_EXPERTS {
            return Err(QuantError::value(format!("{expert_count} = {n_expert}: more than {MAX_EXPERTS}")));
        }
        let head_count = key("attention.head_count");
        let n_head = match get(&head_count) {
            Some(v) => meta::per_layer_u32(&head_count, v, n_layer)?,
            None => 0,
        };
        let head_count_kv = key("attention.head_count_kv");
        let n_head_kv = match get(&head_count_kv) {
            Some(v) => meta::per_layer_u32(&head_count_kv, v, n_layer)?,
            None => n_head,
        };
        Ok(Self::new(&arch, n_layer, n_head, n_head_kv, n_expert))
    }

    /// llama.cpp's `n_gqa()`: query heads per KV head in layer 0 (0 without KV heads).
    pub fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    fn is_falcon(&self) -> bool {
        self.arch == "falcon"
    }
}

/// Reading [`MetaValue`]s the way llama.cpp's `GGUFMeta` does.
mod meta {
    use super::*;

    pub fn string(v: &MetaValue) -> Option<String> {
        v.as_str().map(str::to_string)
    }

    /// A scalar u32 key: llama.cpp insists on the GGUF type u32.
    pub fn scalar_u32(key: &str, v: &MetaValue) -> Result<u32> {
        match v {
            MetaValue::U32(x) => Ok(*x),
            other => {
                Err(QuantError::value(format!("key {key} has wrong type {} but expected type u32", other.type_name())))
            }
        }
    }

    /// `get_key_or_arr` into u32s: a u32 for every layer, or an array of u32, i32 (taken as
    /// u32, as llama.cpp copies them) or bool with exactly `n` items. Returns layer 0's value.
    pub fn per_layer_u32(key: &str, v: &MetaValue, n: u32) -> Result<u32> {
        let first = match v {
            MetaValue::U32Array(a) => (a.len(), a.first().copied()),
            MetaValue::I32Array(a) => (a.len(), a.first().map(|&x| x as u32)),
            MetaValue::BoolArray(a) => (a.len(), a.first().map(|&x| x as u32)),
            MetaValue::F32Array(_) | MetaValue::StrArray(_) => {
                return Err(QuantError::value(format!("{key} has wrong array element type {}", v.type_name())))
            }
            _ if v.array_len().is_some() => {
                return Err(QuantError::value(format!("{key} is not a string/float32/uint32/int32 array")))
            }
            _ => return scalar_u32(key, v),
        };
        match first {
            (len, Some(x)) if len == n as usize => Ok(x),
            (len, _) => Err(QuantError::value(format!("key {key} has wrong array length; expected {n}, got {len}"))),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Tensors and options
// ------------------------------------------------------------------------------------------------

/// A tensor as llama.cpp sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDesc {
    pub name: String,
    /// ggml order: innermost (the row) first, as in GGUF tensor infos.
    pub ne: Vec<u64>,
    /// The type it is stored in now.
    pub ty: GgmlType,
}

impl TensorDesc {
    pub fn new(name: impl Into<String>, ne: &[u64], ty: GgmlType) -> Self {
        Self { name: name.into(), ne: ne.to_vec(), ty }
    }

    /// From a row-major shape (outermost first, as in safetensors, numpy and
    /// [`GgufTensor::shape`](super::GgufTensor)): `ne` is the shape reversed.
    pub fn from_shape(name: impl Into<String>, shape: &[usize], ty: GgmlType) -> Self {
        Self { name: name.into(), ne: shape.iter().rev().map(|&d| d as u64).collect(), ty }
    }

    /// Elements per row (`ne[0]`).
    pub fn ncols(&self) -> u64 {
        self.ne.first().copied().unwrap_or(1)
    }

    /// `ggml_n_dims`: 1 + the index of the last dimension larger than 1 (at least 1), so a
    /// `[384, 1]` tensor counts as 1-D.
    pub fn n_dims(&self) -> usize {
        self.ne.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
    }
}

/// `llama-quantize`'s options that change the mix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MixOptions {
    pub ftype: FileType,
    /// `--pure`: the default type for every quantizable tensor (fallbacks still apply).
    pub pure: bool,
    /// `--leave-output-tensor`: `output.weight` is copied as is.
    pub leave_output_tensor: bool,
    /// `--output-tensor-type`: the type of `output.weight` (and, when the model has no
    /// `output.weight`, of the token embedding it shares). Taken as given, without a fallback.
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`: the type of `token_embd.weight`, as given, without a fallback.
    pub token_embedding_type: Option<GgmlType>,
    /// An importance matrix is given (`--imatrix`): changes `ffn_down` of the first eighth of
    /// the layers for Q4_0 (→ Q4_1) and Q5_0 (→ Q5_1).
    pub has_imatrix: bool,
}

impl MixOptions {
    pub fn new(ftype: FileType) -> Self {
        Self {
            ftype,
            pure: false,
            leave_output_tensor: false,
            output_tensor_type: None,
            token_embedding_type: None,
            has_imatrix: false,
        }
    }
}

/// The type chosen for one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeChoice {
    /// The type it is written in.
    pub ty: GgmlType,
    /// `false`: the tensor is copied as is (`ty` is its current type).
    pub quantize: bool,
    /// Why it is not the default type or is not quantized, e.g. "norm tensor",
    /// "fallback: 384 columns not divisible by 256 (Q4_K) -> Q5_0".
    pub note: Option<String>,
    /// llama.cpp would refuse to quantize it without an importance matrix.
    pub requires_imatrix: bool,
}

// ------------------------------------------------------------------------------------------------
// Categories
// ------------------------------------------------------------------------------------------------

/// llama.cpp's `tensor_category`: broad roles found by name, whatever the architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

impl Category {
    /// `tensor_get_category`: the first match in this order (substring matches, so
    /// `ffn_down_exps` and `ffn_down_shexp` are `FfnDown`).
    pub fn of(name: &str) -> Self {
        if name == "output.weight" {
            Self::Output
        } else if is_token_embd(name) {
            Self::TokenEmbd
        } else if name.contains("attn_qkv.weight") {
            Self::AttnQkv
        } else if name.contains("attn_kv_b.weight") {
            Self::AttnKvB
        } else if name.contains("attn_v.weight") {
            Self::AttnV
        } else if name.contains("attn_k.weight") {
            Self::AttnK
        } else if name.contains("attn_q.weight") {
            Self::AttnQ
        } else if name.contains("attn_output.weight") {
            Self::AttnOutput
        } else if name.contains("ffn_up") {
            Self::FfnUp
        } else if name.contains("ffn_gate") {
            Self::FfnGate
        } else if name.contains("ffn_down") {
            Self::FfnDown
        } else {
            Self::Other
        }
    }

    /// `category_is_attn_v`: tensors that hold V (counted by the `attn_v` rules).
    pub fn is_attn_v(self) -> bool {
        matches!(self, Self::AttnV | Self::AttnQkv | Self::AttnKvB)
    }
}

fn is_token_embd(name: &str) -> bool {
    name == "token_embd.weight" || name == "per_layer_token_embd.weight"
}

/// `sscanf(name, "blk.%d.", &layer) == 1`: the layer of a `blk.N.` name. Like `%d`, it skips
/// leading white space and takes a sign; what follows the digits is not checked.
pub fn layer_of(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?;
    let rest = rest.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, digits) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    // Layer numbers past i32 are not realistic; saturate rather than wrap.
    let v = digits[..n].parse::<i64>().unwrap_or(i64::MAX).min(i32::MAX as i64);
    Some(if neg { -v } else { v })
}

/// The order llama.cpp visits tensors in (`weight_name_comparer`): by layer (-1 without a
/// `blk.N.` prefix), then by name.
fn visit_order(tensors: &[TensorDesc]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    let key = |i: usize| (layer_of(&tensors[i].name).unwrap_or(-1), tensors[i].name.as_bytes());
    order.sort_by(|&a, &b| key(a).cmp(&key(b)));
    order
}

// ------------------------------------------------------------------------------------------------
// The rules
// ------------------------------------------------------------------------------------------------

/// `tensor_allows_quantization`: `Err(reason)` for tensors llama.cpp copies as they are.
fn allows_quantization(t: &TensorDesc, opts: &MixOptions) -> std::result::Result<(), &'static str> {
    if t.n_dims() < 2 {
        return Err("1-D tensor");
    }
    let name = t.name.as_str();
    // llama.cpp: `name.rfind("weight") == name.size() - 6` with unsigned sizes, which also
    // holds for every 5-byte name (npos == 5 - 6 wrapped).
    if !name.ends_with("weight") && name.len() != 5 {
        return Err("name does not end in 'weight'");
    }
    if name.contains("_norm.weight") {
        return Err("norm tensor");
    }
    if opts.leave_output_tensor && name == "output.weight" {
        return Err("output tensor left as is (--leave-output-tensor)");
    }
    const KEEP: &[(&str, &str)] = &[
        ("ffn_gate_inp.weight", "expert gating tensor"),
        ("ffn_gate_tid2eid.weight", "expert routing table"),
        ("altup", "small altup tensor"),
        ("laurel", "small laurel tensor"),
        ("per_layer_model_proj", "per-layer model projection"),
    ];
    for &(part, why) in KEEP {
        if name.contains(part) {
            return Err(why);
        }
    }
    // LLM_TN(arch)(LLM_TENSOR_POS_EMBD / LLM_TENSOR_TOKEN_TYPES, "weight"): the same names for
    // every architecture in llama.cpp b10605.
    if name == "position_embd.weight" {
        return Err("position embedding");
    }
    if name == "token_types.weight" {
        return Err("token type embedding");
    }
    const KEEP_ALSO: &[(&str, &str)] = &[
        ("ssm_conv1d", "small conv1d weight"),
        ("shortconv.conv.weight", "small conv1d weight"),
        ("indexer.k_proj.weight", "small indexer projection"),
        ("indexer.q_proj.weight", "small indexer projection"),
        ("time_mix_first.weight", "small RWKV weight"),
        ("time_mix_w0.weight", "small RWKV weight"),
        ("time_mix_w1.weight", "small RWKV weight"),
        ("time_mix_w2.weight", "small RWKV weight"),
        ("time_mix_v0.weight", "small RWKV weight"),
        ("time_mix_v1.weight", "small RWKV weight"),
        ("time_mix_v2.weight", "small RWKV weight"),
        ("time_mix_a0.weight", "small RWKV weight"),
        ("time_mix_a1.weight", "small RWKV weight"),
        ("time_mix_a2.weight", "small RWKV weight"),
        ("time_mix_g1.weight", "small RWKV weight"),
        ("time_mix_g2.weight", "small RWKV weight"),
        ("time_mix_decay_w1.weight", "small RWKV weight"),
        ("time_mix_decay_w2.weight", "small RWKV weight"),
        ("time_mix_lerp_fused.weight", "small RWKV weight"),
        ("attn_rel_b.weight", "relative position bias"),
        (".position_embd", "multimodal position embedding"),
        ("sam.pos_embd", "multimodal tensor"),
        ("sam.neck.", "multimodal tensor"),
        ("sam.net_", "multimodal tensor"),
        (".rel_pos", "multimodal tensor"),
        (".patch_embd", "multimodal tensor"),
        (".patch_merger", "multimodal tensor"),
        ("a.rvq.codebook", "audio codebook"),
        ("mm.a.code_embd", "audio codebook"),
    ];
    for &(part, why) in KEEP_ALSO {
        if name.contains(part) {
            return Err(why);
        }
    }
    Ok(())
}

/// `tensor_requires_imatrix`.
fn requires_imatrix(name: &str, ty: GgmlType) -> bool {
    if is_token_embd(name) || name == "output.weight" {
        return false;
    }
    // Q2_K needs one only in a Q2_K_S file, which is not one of ours.
    matches!(
        ty,
        GgmlType::IQ3_XXS | GgmlType::IQ2_XXS | GgmlType::IQ2_XS | GgmlType::IQ2_S | GgmlType::IQ1_M | GgmlType::IQ1_S
    )
}

/// `llama_model_quantize`'s running state (`quantize_state_impl`).
struct State<'a> {
    model: &'a ModelInfo,
    opts: &'a MixOptions,
    n_attention_wv: i64,
    i_attention_wv: i64,
    /// n_ffn_down = n_ffn_gate = n_ffn_up = n_layer_all
    n_ffn: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
    /// The model has no `output.weight`: its token embedding doubles as the output.
    has_tied_embeddings: bool,
}

/// `use_more_bits`: the first and last eighth of the layers, and every third one between.
pub fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

impl State<'_> {
    /// `layer_info`: the counter as the layer, except in MoE models (experts make the count
    /// of ffn tensors per layer vary), where the layer is read from the name.
    fn layer_info(&self, counter: i64, name: &str) -> Result<(i64, i64)> {
        let n = self.n_ffn;
        if self.model.n_expert > 1 {
            let i = layer_of(name).ok_or_else(|| {
                QuantError::value(format!(
                    "Failed to determine layer for tensor {name} (the model has {} experts, so llama.cpp reads the \
                     layer of every ffn tensor from a 'blk.N.' prefix)",
                    self.model.n_expert
                ))
            })?;
            if i < 0 || i >= n {
                return Err(QuantError::value(format!("Bad layer {i} for tensor {name}. Must be in [0, {n})")));
            }
            return Ok((i, n));
        }
        Ok((counter, n))
    }

    /// `llama_tensor_get_type_impl` for our file types: `new` is the default type.
    fn mix_type(&mut self, t: &TensorDesc, category: Category, new: GgmlType) -> Result<GgmlType> {
        use FileType as F;
        use GgmlType as G;
        let ftype = self.opts.ftype;
        let model = self.model;
        let falcon = model.is_falcon();
        let name = t.name.as_str();

        let ty = match category {
            // The output, and the token embedding when it doubles as the output.
            Category::Output | Category::TokenEmbd if category == Category::Output || self.has_tied_embeddings => {
                if let Some(ty) = self.opts.output_tensor_type {
                    ty
                } else if falcon || !t.ncols().is_multiple_of(new.block().0 as u64) {
                    G::Q8_0
                } else if new != G::Q8_0 {
                    // (IQ1/IQ2/IQ3_XXS file types: Q5_K)
                    G::Q6_K
                } else {
                    new
                }
            }
            // (MXFP4_MOE: experts MXFP4, everything else Q8_0)
            Category::TokenEmbd => {
                // --token-embedding-type is applied before these rules; the IQ/TQ file types
                // would change it here.
                self.opts.token_embedding_type.unwrap_or(new)
            }
            // (IQ1/IQ2 file types: their own rules for attn_v, attn_k, ffn_down, attn_output)
            //
            // llama.cpp's separate branch for ATTENTION_QKV (Q3_K_M/L → Q4_K, Q4_K_M → Q5_K,
            // Q5_K_M → Q6_K) comes after this one, and `category_is_attn_v` includes QKV, so it
            // is never reached: fused QKV tensors follow the attn_v rules and count as attn_v.
            c if c.is_attn_v() => {
                let i = self.i_attention_wv;
                let mut ty = match ftype {
                    F::Q2_K => {
                        if model.n_gqa() >= 4 {
                            G::Q4_K
                        } else {
                            G::Q3_K
                        }
                    }
                    F::Q3_K_M => {
                        if i < 2 {
                            G::Q5_K
                        } else {
                            G::Q4_K
                        }
                    }
                    F::Q3_K_L => G::Q5_K,
                    F::Q4_K_M | F::Q5_K_M if use_more_bits(i, self.n_attention_wv) => G::Q6_K,
                    F::Q4_K_S if i < 4 => G::Q5_K,
                    _ => new,
                };
                if model.is_70b && matches!(ty, G::Q3_K | G::Q4_K) {
                    // 8 heads share each attn_v there: more bits cost little.
                    ty = G::Q5_K;
                }
                if model.n_expert == 8 {
                    ty = G::Q8_0;
                }
                self.i_attention_wv += 1;
                ty
            }
            Category::AttnK => {
                if model.n_expert == 8 {
                    G::Q8_0
                } else {
                    new // (IQ3_XS: IQ3_XXS; IQ3_XXS: IQ2_S)
                }
            }
            Category::AttnQ => new, // (IQ3_XS: IQ3_XXS; IQ3_XXS: IQ2_S)
            Category::FfnDown => {
                let (i, n) = self.layer_info(self.i_ffn_down, name)?;
                let more = use_more_bits(i, n);
                let ty = match ftype {
                    F::Q2_K => G::Q3_K,
                    F::Q3_K_M => {
                        if i < n / 16 {
                            G::Q5_K
                        } else if !falcon || more {
                            G::Q4_K
                        } else {
                            G::Q3_K
                        }
                    }
                    F::Q3_K_L => {
                        if falcon {
                            G::Q4_K
                        } else {
                            G::Q5_K
                        }
                    }
                    F::Q4_K_M => {
                        if falcon {
                            if i < n / 16 {
                                G::Q6_K
                            } else if more {
                                G::Q5_K
                            } else {
                                G::Q4_K
                            }
                        } else if more {
                            G::Q6_K
                        } else {
                            new
                        }
                    }
                    F::Q5_K_M if more => G::Q6_K,
                    F::Q4_K_S if !falcon && i < n / 8 => G::Q5_K,
                    // With an imatrix, guard the first ffn_down layers of Q4_0/Q5_0.
                    F::Q4_0 if self.opts.has_imatrix && i < n / 8 => G::Q4_1,
                    F::Q5_0 if self.opts.has_imatrix && i < n / 8 => G::Q5_1,
                    _ => new,
                };
                self.i_ffn_down += 1;
                ty
            }
            Category::AttnOutput => {
                if !falcon {
                    if model.n_expert == 8 {
                        match ftype {
                            F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::Q4_K_S | F::Q4_K_M => G::Q5_K,
                            _ => new,
                        }
                    } else {
                        match ftype {
                            F::Q2_K => G::Q3_K,
                            F::Q3_K_M => G::Q4_K,
                            F::Q3_K_L => G::Q5_K,
                            _ => new,
                        }
                    }
                } else if ftype == F::Q3_K_L {
                    G::Q4_K
                } else {
                    new
                }
            }
            Category::FfnGate => {
                // Only IQ3_XS changes ffn_gate, but the layer is still checked.
                self.layer_info(self.i_ffn_gate, name)?;
                self.i_ffn_gate += 1;
                new
            }
            Category::FfnUp => {
                self.layer_info(self.i_ffn_up, name)?;
                self.i_ffn_up += 1;
                new
            }
            Category::AttnQkv | Category::AttnV | Category::AttnKvB | Category::Output | Category::Other => new,
        };
        Ok(ty)
    }
}

/// `tensor_type_fallback`: a type whose blocks fit the row, and why (`None`: `ty` fits).
pub fn fallback(t: &TensorDesc, ty: GgmlType) -> Result<(GgmlType, Option<String>)> {
    use GgmlType as G;
    let ncols = t.ncols();
    let block = ty.block().0 as u64;
    if ncols.is_multiple_of(block) {
        return Ok((ty, None));
    }
    let to = match ty {
        G::IQ1_S | G::IQ1_M | G::IQ2_XXS | G::IQ2_XS | G::IQ2_S | G::IQ3_XXS | G::IQ3_S | G::IQ4_XS => G::IQ4_NL,
        G::Q2_0 | G::Q2_K | G::Q3_K | G::TQ1_0 | G::TQ2_0 => G::Q4_0,
        G::Q4_K => G::Q5_0,
        G::Q5_K => G::Q5_1,
        G::Q6_K => G::Q8_0,
        _ => {
            return Err(QuantError::value(format!(
                "no tensor type fallback is defined for type {ty}: tensor '{}' has rows of {ncols}, not a multiple of {block}",
                t.name
            )))
        }
    };
    if !ncols.is_multiple_of(to.block().0 as u64) {
        let note =
            format!("fallback: {ncols} columns not divisible by {block} ({ty}) nor by {} ({to}) -> F16", to.block().0);
        return Ok((G::F16, Some(note)));
    }
    Ok((to, Some(format!("fallback: {ncols} columns not divisible by {block} ({ty}) -> {to}"))))
}

/// A type given on the command line is used as is; llama.cpp aborts later when the rows do not
/// fit its blocks, so refuse here.
fn given(t: &TensorDesc, ty: GgmlType, option: &str) -> Result<GgmlType> {
    let block = ty.block().0 as u64;
    if !t.ncols().is_multiple_of(block) {
        return Err(QuantError::value(format!(
            "{option} {ty}: tensor '{}' has rows of {}, not a multiple of {block}",
            t.name,
            t.ncols()
        )));
    }
    Ok(ty)
}

/// The type llama-quantize gives every tensor of `tensors` (a model's tensors, all of them:
/// the rules count some), in input order. Errors where llama-quantize would stop: a row that
/// fits neither the chosen type nor its fallback (`no tensor type fallback is defined`), an MoE
/// ffn tensor without a `blk.N.` layer, a type given for the output or the token embedding that
/// does not fit its rows, duplicate names.
///
/// `quantize` is false for tensors kept as they are (and for those already in the chosen
/// type); a quantized input tensor that must change type needs llama-quantize's
/// `--allow-requantize`, which is the caller's business.
pub fn choose_types(model: &ModelInfo, tensors: &[TensorDesc], opts: &MixOptions) -> Result<Vec<TypeChoice>> {
    let order = visit_order(tensors);
    for w in order.windows(2) {
        if tensors[w[0]].name == tensors[w[1]].name {
            return Err(QuantError::value(format!("duplicate tensor name '{}'", tensors[w[0]].name)));
        }
    }

    // init_quantize_state_counters: over every tensor, quantizable or not.
    let mut state = State {
        model,
        opts,
        n_attention_wv: tensors.iter().filter(|t| Category::of(&t.name).is_attn_v()).count() as i64,
        i_attention_wv: 0,
        n_ffn: model.n_layer as i64,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
        has_tied_embeddings: !tensors.iter().any(|t| t.name == "output.weight"),
    };
    let default_type = opts.ftype.default_type();

    let mut out: Vec<Option<TypeChoice>> = vec![None; tensors.len()];
    for &i in &order {
        let t = &tensors[i];
        let category = Category::of(&t.name);
        let allowed = allows_quantization(t, opts);
        let quantizable = allowed.is_ok();
        let (ty, note) = match allowed {
            Err(why) => (t.ty, Some(why.to_string())),
            // llama_tensor_get_type
            Ok(()) => {
                if let (Some(ty), Category::TokenEmbd) = (opts.token_embedding_type, category) {
                    (given(t, ty, "--token-embedding-type")?, Some("--token-embedding-type".to_string()))
                } else if let (Some(ty), Category::Output) = (opts.output_tensor_type, category) {
                    (given(t, ty, "--output-tensor-type")?, Some("--output-tensor-type".to_string()))
                } else if default_type.is_quantized() {
                    let mixed = if opts.pure { default_type } else { state.mix_type(t, category, default_type)? };
                    let (ty, why) = fallback(t, mixed)?;
                    let note = why.or_else(|| (ty != default_type).then(|| format!("{} rule", opts.ftype)));
                    (ty, note)
                } else {
                    (default_type, None)
                }
            }
        };
        // tensor_requires_imatrix; llama-quantize refuses only quantizable ones without an imatrix.
        let requires_imatrix = quantizable && requires_imatrix(&t.name, ty);
        if requires_imatrix && !opts.has_imatrix {
            return Err(QuantError::value(format!(
                "this quantization requires an importance matrix: tensor {} -> {ty}",
                t.name
            )));
        }
        let quantize = ty != t.ty;
        let note = match note {
            None if !quantize => Some(format!("already {ty}")),
            n => n,
        };
        out[i] = Some(TypeChoice { ty, quantize, note, requires_imatrix });
    }
    Ok(out.into_iter().map(|c| c.expect("every tensor visited")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType as G;

    #[test]
    fn file_types_parse_with_aliases_and_ids() {
        for &f in FileType::ALL {
            assert_eq!(f.name().parse::<FileType>().unwrap(), f);
            assert_eq!(f.name().to_ascii_lowercase().parse::<FileType>().unwrap(), f);
            assert_eq!(FileType::from_id(f.id()), Some(f));
        }
        assert_eq!("q3_k".parse::<FileType>().unwrap(), FileType::Q3_K_M);
        assert_eq!("Q4_K".parse::<FileType>().unwrap(), FileType::Q4_K_M);
        assert_eq!("q5_K".parse::<FileType>().unwrap(), FileType::Q5_K_M);
        assert!("q2_k_s".parse::<FileType>().is_err());
        assert!("q4_k_x".parse::<FileType>().is_err());
        assert_eq!(FileType::Q4_K_M.id(), 15);
        assert_eq!(FileType::Q5_0.id(), 8);
        assert_eq!(FileType::BF16.id(), 32);
        assert_eq!(FileType::Q3_K_L.default_type(), G::Q3_K);
        assert_eq!(FileType::F16.default_type(), G::F16);
        assert_eq!(FileType::from_id(21), None); // Q2_K_S: not offered
    }

    #[test]
    fn use_more_bits_for_32_layers() {
        // n/8 = 4, 7n/8 = 28: layers 0-3, 28-31, and 6, 9, …, 27 (i - 4 ≡ 2 mod 3)
        let more: Vec<i64> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(more, vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        // no layers: everything counts as "last eighth"; no division by zero
        assert!(use_more_bits(0, 0) && use_more_bits(5, 0));
        // 6 layers (MiniLM): n/8 = 0, 7n/8 = 5
        let more: Vec<i64> = (0..6).filter(|&i| use_more_bits(i, 6)).collect();
        assert_eq!(more, vec![2, 5]);
    }

    #[test]
    fn fallback_chain() {
        let t = |ncols| TensorDesc::new("blk.0.ffn_down.weight", &[ncols, 16], G::F32);
        assert_eq!(fallback(&t(512), G::Q4_K).unwrap(), (G::Q4_K, None));
        assert_eq!(fallback(&t(384), G::Q4_K).unwrap().0, G::Q5_0);
        assert_eq!(fallback(&t(384), G::Q5_K).unwrap().0, G::Q5_1);
        assert_eq!(fallback(&t(384), G::Q6_K).unwrap().0, G::Q8_0);
        assert_eq!(fallback(&t(384), G::Q3_K).unwrap().0, G::Q4_0);
        assert_eq!(fallback(&t(384), G::Q2_K).unwrap().0, G::Q4_0);
        let (ty, note) = fallback(&t(48), G::Q4_K).unwrap();
        assert_eq!(ty, G::F16);
        assert!(note.unwrap().contains("-> F16"));
        assert_eq!(fallback(&t(64), G::Q4_0).unwrap().0, G::Q4_0);
        let err = fallback(&t(48), G::Q4_0).unwrap_err().to_string();
        assert!(err.contains("no tensor type fallback is defined for type Q4_0"), "{err}");
    }

    #[test]
    fn categories_and_layers() {
        assert_eq!(Category::of("output.weight"), Category::Output);
        assert_eq!(Category::of("token_embd.weight"), Category::TokenEmbd);
        assert_eq!(Category::of("blk.3.attn_qkv.weight"), Category::AttnQkv);
        assert_eq!(Category::of("blk.3.ffn_down_exps.weight"), Category::FfnDown);
        assert_eq!(Category::of("blk.3.ffn_gate_inp.weight"), Category::FfnGate);
        assert_eq!(Category::of("blk.3.attn_k_b.weight"), Category::Other);
        assert_eq!(layer_of("blk.12.attn_v.weight"), Some(12));
        assert_eq!(layer_of("blk. 7x"), Some(7));
        assert_eq!(layer_of("blk.-1.a"), Some(-1));
        assert_eq!(layer_of("output.weight"), None);
        assert_eq!(layer_of("blk.x.y"), None);
        let ts: Vec<TensorDesc> = ["blk.10.a.weight", "blk.2.z.weight", "output.weight", "blk.2.b.weight", "a.weight"]
            .iter()
            .map(|n| TensorDesc::new(*n, &[256, 2], G::F32))
            .collect();
        let names: Vec<&str> = visit_order(&ts).into_iter().map(|i| ts[i].name.as_str()).collect();
        assert_eq!(names, ["a.weight", "output.weight", "blk.2.b.weight", "blk.2.z.weight", "blk.10.a.weight"]);
    }

    #[test]
    fn allows_quantization_rules() {
        let o = MixOptions::new(FileType::Q4_0);
        let ok = |name: &str, ne: &[u64]| allows_quantization(&TensorDesc::new(name, ne, G::F32), &o).is_ok();
        assert!(ok("blk.0.attn_q.weight", &[256, 256]));
        assert!(!ok("blk.0.attn_q.weight", &[256, 1])); // ggml_n_dims == 1
        assert!(!ok("blk.0.attn_q.bias", &[256, 256]));
        assert!(!ok("blk.0.attn_norm.weight", &[256, 256]));
        assert!(!ok("token_types.weight", &[256, 2]));
        assert!(!ok("position_embd.weight", &[256, 512]));
        assert!(!ok("blk.0.ffn_gate_inp.weight", &[256, 8]));
        assert!(ok("blk.0.ffn_up_exps.weight", &[256, 512, 8]));
        assert!(ok("abcde", &[256, 2])); // llama.cpp's unsigned arithmetic: any 5-byte name
        assert!(!ok("abcdef", &[256, 2]));
        let leave = MixOptions { leave_output_tensor: true, ..o };
        assert!(allows_quantization(&TensorDesc::new("output.weight", &[256, 2], G::F32), &leave).is_err());
    }

    fn llama(n_layer: usize, n_ff: u64) -> Vec<TensorDesc> {
        let mut ts = vec![
            TensorDesc::new("token_embd.weight", &[256, 1000], G::F32),
            TensorDesc::new("output_norm.weight", &[256], G::F32),
        ];
        for i in 0..n_layer {
            for (n, ne) in [
                ("attn_norm.weight", vec![256]),
                ("attn_q.weight", vec![256, 256]),
                ("attn_k.weight", vec![256, 64]),
                ("attn_v.weight", vec![256, 64]),
                ("attn_output.weight", vec![256, 256]),
                ("ffn_norm.weight", vec![256]),
                ("ffn_gate.weight", vec![256, n_ff]),
                ("ffn_up.weight", vec![256, n_ff]),
                ("ffn_down.weight", vec![n_ff, 256]),
            ] {
                ts.push(TensorDesc::new(format!("blk.{i}.{n}"), &ne, G::F32));
            }
        }
        ts
    }

    fn find<'a>(ts: &[TensorDesc], cs: &'a [TypeChoice], name: &str) -> &'a TypeChoice {
        &cs[ts.iter().position(|t| t.name == name).unwrap()]
    }

    #[test]
    fn q4_k_m_by_hand() {
        let m = ModelInfo::new("llama", 32, 32, 8, 0);
        let ts = llama(32, 512);
        let cs = choose_types(&m, &ts, &MixOptions::new(FileType::Q4_K_M)).unwrap();
        // tied embeddings: token_embd gets the output's Q6_K
        assert_eq!(find(&ts, &cs, "token_embd.weight").ty, G::Q6_K);
        assert_eq!(find(&ts, &cs, "output_norm.weight").ty, G::F32);
        assert!(!find(&ts, &cs, "output_norm.weight").quantize);
        for i in 0..32 {
            let want = if use_more_bits(i, 32) { G::Q6_K } else { G::Q4_K };
            assert_eq!(find(&ts, &cs, &format!("blk.{i}.attn_v.weight")).ty, want, "attn_v {i}");
            assert_eq!(find(&ts, &cs, &format!("blk.{i}.ffn_down.weight")).ty, want, "ffn_down {i}");
            assert_eq!(find(&ts, &cs, &format!("blk.{i}.attn_q.weight")).ty, G::Q4_K);
        }
        // the same model with 384-wide ffn rows: ffn_down falls back (Q4_K -> Q5_0, Q6_K -> Q8_0)
        let ts = llama(32, 384);
        let cs = choose_types(&m, &ts, &MixOptions::new(FileType::Q4_K_M)).unwrap();
        assert_eq!(find(&ts, &cs, "blk.0.ffn_down.weight").ty, G::Q8_0);
        assert_eq!(find(&ts, &cs, "blk.4.ffn_down.weight").ty, G::Q5_0);
        assert!(find(&ts, &cs, "blk.4.ffn_down.weight").note.as_ref().unwrap().contains("fallback"));
    }

    #[test]
    fn seventy_b_and_gqa() {
        let m = ModelInfo::new("llama", 80, 64, 8, 0);
        assert!(m.is_70b);
        assert!(!ModelInfo::new("llama", 80, 64, 64, 0).is_70b);
        assert!(!ModelInfo::new("llama", 80, 64, 8, 8).is_70b);
        let ts = llama(80, 512);
        let cs = choose_types(&m, &ts, &MixOptions::new(FileType::Q3_K_S)).unwrap();
        assert_eq!(find(&ts, &cs, "blk.40.attn_v.weight").ty, G::Q5_K);
        let cs = choose_types(&m, &ts, &MixOptions::new(FileType::Q2_K)).unwrap();
        // n_gqa 8 >= 4 -> Q4_K, then 70B -> Q5_K
        assert_eq!(find(&ts, &cs, "blk.40.attn_v.weight").ty, G::Q5_K);
    }

    #[test]
    fn unknown_models_and_errors() {
        let m = ModelInfo::unknown();
        let ts = vec![
            TensorDesc::new("down_blocks.0.proj.weight", &[320, 640], G::F32),
            TensorDesc::new("down_blocks.0.ffn_down.weight", &[320, 640], G::F32),
            TensorDesc::new("down_blocks.0.proj.bias", &[640], G::F32),
        ];
        for &f in FileType::ALL {
            let cs = choose_types(&m, &ts, &MixOptions::new(f)).unwrap();
            assert_eq!(cs[2].ty, G::F32);
            assert!(!cs[2].quantize);
        }
        let cs = choose_types(&m, &ts, &MixOptions::new(FileType::Q4_K_M)).unwrap();
        assert_eq!(cs[0].ty, G::Q5_0); // 320 is not a multiple of 256
        assert_eq!(TensorDesc::from_shape("x", &[640, 320], G::F16).ne, vec![320, 640]);
                                       // legacy types have no fallback
        let odd = vec![TensorDesc::new("conv.weight", &[3, 3, 4, 8], G::F32)];
        assert!(choose_types(&m, &odd, &MixOptions::new(FileType::Q8_0)).is_err());
        let c = choose_types(&m, &odd, &MixOptions::new(FileType::Q6_K)).unwrap();
        assert_eq!(c[0].ty, G::F16);
        // MoE ffn tensors need a layer
        let moe = ModelInfo::new("llama", 2, 8, 8, 8);
        let ts = vec![TensorDesc::new("ffn_down_exps.weight", &[256, 256, 8], G::F32)];
        let err = choose_types(&moe, &ts, &MixOptions::new(FileType::Q4_0)).unwrap_err().to_string();
        assert!(err.contains("Failed to determine layer for tensor ffn_down_exps.weight"), "{err}");
        let ts = vec![TensorDesc::new("blk.2.ffn_up_exps.weight", &[256, 256, 8], G::F32)];
        let err = choose_types(&moe, &ts, &MixOptions::new(FileType::Q4_0)).unwrap_err().to_string();
        assert!(err.contains("Bad layer 2"), "{err}");
        // --pure still falls back
        let ts = vec![TensorDesc::new("blk.0.ffn_down.weight", &[384, 8], G::F32)];
        let pure = MixOptions { pure: true, ..MixOptions::new(FileType::Q4_K_M) };
        assert_eq!(choose_types(&ModelInfo::unknown(), &ts, &pure).unwrap()[0].ty, G::Q5_0);
    }
}
