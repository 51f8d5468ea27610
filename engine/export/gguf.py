"""Convert a merged 16-bit transformers model folder to GGUF, quantize it with llama.cpp, and check it against PyTorch.

`convert` streams the safetensors one tensor at a time into a GGUF file (F16 or BF16 matrices, F32 for the 1-D
norms and biases, as llama.cpp's own converter does), so RAM stays bounded by the largest tensor whatever the model
size. The header carries the architecture's hyper-parameters, the tokenizer and the chat template, so llama.cpp and
Ollama need nothing else. Tokenizers come from tokenizer.json: byte-level BPE (Llama 3, Qwen) as llama.cpp's "gpt2"
model (tokens, types, merges, pre-tokenizer name), SentencePiece-style BPE with byte fallback (Llama 2, Mistral,
Gemma) as its "llama" model (tokens, scores from the merge ranks, <0xXX> byte tokens, the space-prefix flag).
SentencePiece Unigram tokenizers (T5-style) are refused with a sentence. The model's sampling defaults
(engine.chat.infer.folder_sampling) go into the header's general.sampling.* keys and the Modelfile.

Supported: Llama, Mistral and Mixtral (written as llama.cpp's "llama", with q/k rows permuted from transformers'
rotate-half rope layout to llama.cpp's interleaved one), Qwen2 (q/k/v biases), Qwen3 (per-head q/k RMSNorm) and
Qwen3-MoE and gpt-oss (experts: engine.export.gguf_moe); Qwen and gpt-oss use NEOX
rope in llama.cpp, so its rows are written unpermuted. Gemma, Gemma 2 and Gemma 3 (text; a multimodal Gemma 3
folder exports its language model) are NEOX too; their RMSNorms scale by (1 + w), which llama.cpp expects folded into
the stored weight, so every norm is written as 1 + w. llama.cpp applies Gemma's sqrt(hidden) embedding scale itself
(no key), reads Gemma 2's attention and final logit soft-capping and the sliding window from the header, and takes the
sliding/global layer pattern (every 2nd layer global for Gemma 2, every 6th for Gemma 3, local rope base 10000) from
the architecture, so a config that differs from it is refused. Anything else raises a UserError before a byte is
written.

Over 500 lines on purpose: the per-architecture header keys, tokenizer encoding and tensor layout must match
llama.cpp's loader together, and the check of the result against PyTorch reads the same keys; the Ollama Modelfile
is engine.export.ollama's.
"""

import ctypes
import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path

from engine.core.errors import UserError
from engine.export import gguf_moe

# model_type (config.json) -> llama.cpp architecture name (gguf.MODEL_ARCH member name)
ARCHS = {
    "llama": "LLAMA",
    "mistral": "LLAMA",
    "qwen2": "QWEN2",
    "qwen3": "QWEN3",
    "gemma": "GEMMA",
    "gemma2": "GEMMA2",
    "gemma3_text": "GEMMA3",
    **gguf_moe.ARCHS,
}
PERMUTE_QK = {"llama", "mistral", "mixtral"}  # transformers' rotate-half rope -> llama.cpp's interleaved (NORM) rope
GEMMA = {"gemma", "gemma2", "gemma3_text"}  # RMSNorm scales by (1 + w): written as 1 + w
# llama.cpp's fixed sliding-window layout: layer i is global when (i + 1) % period == 0
SWA_PERIOD = {"gemma2": 2, "gemma3_text": 6}
# Layer counts of the 27B models, for which llama.cpp scales queries by (hidden / heads)^-0.5 instead of head_dim^-0.5
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3_text": 62}

# export format -> (16-bit GGUF type written by convert, llama.cpp ftype name to quantize to, or None)
QUANTS = {
    "gguf-f16": ("F16", None),
    "gguf-bf16": ("BF16", None),
    "gguf-q8_0": (None, "LLAMA_FTYPE_MOSTLY_Q8_0"),
    "gguf-q4_k_m": (None, "LLAMA_FTYPE_MOSTLY_Q4_K_M"),
    "gguf-q5_k_m": (None, "LLAMA_FTYPE_MOSTLY_Q5_K_M"),
    "gguf-q6_k": (None, "LLAMA_FTYPE_MOSTLY_Q6_K"),
    "gguf-mxfp4": (None, "LLAMA_FTYPE_MOSTLY_MXFP4_MOE"),  # experts MXFP4, the rest Q8_0, as gpt-oss ships
}
# Bytes per weight of each format, for the size estimate before an export starts. K-quants mix block types; the
# Q4_K_M figure is measured (a random 596M-weight Qwen3 gave 394 MB, 0.66 B/weight), the others are llama.cpp's
# reported bits per weight.
BYTES_PER_WEIGHT = {
    "gguf-f16": 2.0,
    "gguf-bf16": 2.0,
    "gguf-q8_0": 1.07,
    "gguf-q4_k_m": 0.66,
    "gguf-q5_k_m": 0.71,
    "gguf-q6_k": 0.82,
}
# gguf-mxfp4 stores the expert projections in MXFP4 (32 weights in 17 bytes: 4-bit values, one 8-bit shared exponent)
# and every other matrix in Q8_0 (32 weights in 34 bytes), so its size follows the model's expert share; llama.cpp
# keeps the routers in their 16-bit type and the norms and biases in F32, too few weights to count.
MXFP4_BYTES, Q8_0_BYTES = 17 / 32, 34 / 32

# Pre-tokenizer regexes of known byte-level BPE families -> llama.cpp's tokenizer.ggml.pre name. llama.cpp picks its
# own split regex from that name, so the name must describe the same split as tokenizer.json or prompts tokenize
# differently under llama.cpp than in training.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_BY_SPLIT = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}
PRE_BY_ARCH = {"qwen2": "qwen2", "qwen3": "qwen2", "qwen3_moe": "qwen2", "gpt_oss": "gpt-4o"}  # gpt-oss: o200k


def supported(model_dir: Path, tok_dir: Path | None = None) -> tuple[bool, str]:
    """(can export to GGUF, reason) for a model folder (and the folder of its tokenizer, when elsewhere): the
    architecture and the tokenizer kind are checked, so the UI can disable the option with the reason."""
    try:
        cfg = _config(model_dir)
        gguf_moe.check(cfg, _arch(cfg))
        has_own = tok_dir is not None and (tok_dir / "tokenizer.json").is_file()
        _tokenizer_json(tok_dir if has_own else model_dir)
    except UserError as e:
        return False, str(e)
    return True, "supported"


def _config(model_dir: Path) -> dict:
    cfg = json.loads((model_dir / "config.json").read_text())
    return cfg.get("text_config", cfg) if cfg.get("model_type") not in ARCHS else cfg


def _arch(cfg: dict) -> str:
    mt = cfg.get("model_type", "?")
    if mt not in ARCHS:
        raise UserError(
            f"GGUF export does not support the '{mt}' architecture yet; it supports "
            f"{', '.join(sorted(ARCHS))}. Export as merged16 and convert with llama.cpp's convert_hf_to_gguf.py."
        )
    return mt


def _shown(folder: Path) -> str:
    """The name a user knows a folder by: a run's `adapter/` folder (which holds the run's tokenizer), or its `model/`
    one (a full fine-tune's weights), is the run."""
    in_run = folder.name == "adapter" or (folder.name == "model" and (folder.parent / "job.yaml").is_file())
    return folder.parent.name if in_run else folder.name


def _tokenizer_json(model_dir: Path) -> dict:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise UserError(
            f"'{_shown(model_dir)}' has no tokenizer.json (only a SentencePiece .model file); GGUF export reads "
            "tokenizer.json. Export as merged16 instead."
        )
    tj = json.loads(path.read_text())
    _tokenizer_kind(tj, _shown(model_dir))
    return tj


def _tokenizer_kind(tj: dict, name: str) -> str:
    """llama.cpp's tokenizer model for a tokenizer.json: "gpt2" for byte-level BPE (Llama 3, Qwen), "llama" for
    SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Gemma); anything else is refused."""
    model, decoder = tj.get("model") or {}, tj.get("decoder") or {}
    decoders = [decoder] + list(decoder.get("decoders") or [])
    if model.get("type") == "BPE" and any(d.get("type") == "ByteLevel" for d in decoders):
        return "gpt2"
    if model.get("type") == "BPE" and model.get("byte_fallback") and not model.get("continuing_subword_prefix"):
        return "llama"
    what = {
        "Unigram": "a SentencePiece Unigram model",
        "BPE": "a BPE model without byte-level decoding or byte fallback",
    }.get(model.get("type"), f"a {model.get('type', 'unknown')} model")
    raise UserError(
        f"GGUF export cannot convert the tokenizer of '{name}': it is {what}, and the export writes only "
        "byte-level BPE tokenizers (Llama 3, Qwen) and SentencePiece BPE tokenizers with byte fallback (Llama 2, "
        "Mistral, Gemma); export as merged16 instead."
    )


def _add_space_prefix(tj: dict) -> bool:
    """Whether text gets a leading '▁': llama.cpp adds one at the start and after every special token, as a
    Prepend normalizer or a Metaspace pre-tokenizer with prepend_scheme "always" does. "first" (prefix at the very
    start only) has no llama.cpp equivalent; chat prompts start with a special token, where "first" adds none, so it
    is written as no prefix (the tokenizer check after export catches a prompt where that differs)."""
    steps = []
    for part in (tj.get("normalizer"), tj.get("pre_tokenizer")):
        part = part or {}
        steps += [part] + list(part.get("normalizers") or part.get("pretokenizers") or [])
    for s in steps:
        if s.get("type") == "Prepend" and s.get("prepend") == "▁":
            return True
        if s.get("type") == "Metaspace":
            return s.get("prepend_scheme", "always" if s.get("add_prefix_space", True) else "never") == "always"
    return False


def _pre_tokenizer(tj: dict, model_type: str, log) -> str:
    pre = tj.get("pre_tokenizer") or {}
    steps = [pre] + list(pre.get("pretokenizers") or [])
    splits = [s["pattern"].get("Regex") for s in steps if s.get("type") == "Split" and "pattern" in s]
    for regex in splits:
        if regex in PRE_BY_SPLIT:
            return PRE_BY_SPLIT[regex]
    if not splits and any(s.get("type") == "ByteLevel" and s.get("use_regex", True) for s in steps):
        return "gpt-2"  # plain ByteLevel splits with GPT-2's regex
    name = PRE_BY_ARCH.get(model_type, "default")
    log(f"gguf: unrecognised pre-tokenizer {steps}; writing '{name}', prompts may tokenize slightly differently")
    return name


def _rope_params(cfg: dict) -> dict:
    """The (global layers') rope parameters: transformers 5 nests Gemma 3's per layer type."""
    rp = cfg.get("rope_parameters") or {}
    return rp.get("full_attention", rp)


def _rope_theta(cfg: dict) -> float:
    return float(_rope_params(cfg).get("rope_theta") or cfg.get("rope_theta") or 10000.0)


def _rope_scaling(cfg: dict) -> dict:
    """The rope scaling dict (transformers 5 keeps it in rope_parameters, older configs in rope_scaling), or {}."""
    rs = dict(cfg.get("rope_scaling") or _rope_params(cfg))
    kind = rs.get("rope_type") or rs.get("type") or "default"
    return {} if kind == "default" else {**rs, "kind": kind}


def _llama3_rope_factors(cfg: dict, head_dim: int, rs: dict):
    """Per-frequency divisors of Llama 3.1's rope scaling, which llama.cpp reads from a rope_freqs tensor."""
    import numpy as np

    base, factor = _rope_theta(cfg), float(rs.get("factor", 8.0))
    low, high = float(rs.get("low_freq_factor", 1.0)), float(rs.get("high_freq_factor", 4.0))
    old_ctx = float(rs.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _add_hparams(w, cfg: dict, model_type: str, gtype: str, extra_tensors: dict, log) -> None:
    import gguf

    n_head = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or n_head)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_vocab_size(cfg["vocab_size"])
    if head_dim * n_head != cfg["hidden_size"] or "head_dim" in cfg:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if model_type in PERMUTE_QK:
        w.add_rope_dimension_count(head_dim)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if gtype == "BF16" else gguf.LlamaFileType.MOSTLY_F16)
    if model_type in GEMMA:
        _add_gemma_hparams(w, cfg, model_type, head_dim)
    gguf_moe.add_hparams(w, cfg, model_type)
    rs = _rope_scaling(cfg)
    if not rs:
        return
    kind = rs["kind"]
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rs["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rs["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(rs.get("original_max_position_embeddings", 4096)))
        if "beta_fast" in rs:  # llama.cpp's defaults (32, 1) otherwise, as transformers'
            w.add_rope_scaling_yarn_beta_fast(float(rs["beta_fast"]))
            w.add_rope_scaling_yarn_beta_slow(float(rs.get("beta_slow", 1.0)))
    elif kind == "llama3":
        extra_tensors[gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"] = _llama3_rope_factors(
            cfg, head_dim, rs
        )
    else:
        raise UserError(
            f"GGUF export does not support rope scaling '{kind}' (supported: linear, yarn, llama3); "
            "export as merged16 instead."
        )
    log(f"gguf: rope scaling {kind}")


def _add_gemma_hparams(w, cfg: dict, model_type: str, head_dim: int) -> None:
    """Soft-capping and sliding window; refuses what llama.cpp's fixed Gemma layout would compute differently."""
    n_layers, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]

    def refuse(what):
        raise UserError(
            f"GGUF export: this {model_type} model's {what} differs from what llama.cpp computes for it; "
            "export as merged16 instead."
        )

    if model_type != "gemma":
        qpas = cfg.get("query_pre_attn_scalar") or head_dim
        is_27b = n_layers == GEMMA_27B_LAYERS[model_type] and qpas == cfg["hidden_size"] // n_head
        if qpas != head_dim and not is_27b:
            refuse(f"query_pre_attn_scalar ({qpas})")
        period = SWA_PERIOD[model_type]
        expected = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(n_layers)]
        if cfg.get("sliding_window") and (cfg.get("layer_types") or expected) != expected:
            refuse(f"sliding/global layer pattern {cfg.get('layer_types')}")
        local = (cfg.get("rope_parameters") or {}).get("sliding_attention")
        if local and float(local.get("rope_theta", 10000.0)) != 10000.0:
            refuse(f"local rope base ({local.get('rope_theta')})")
        if cfg.get("sliding_window"):
            w.add_sliding_window(int(cfg["sliding_window"]))
            w.add_sliding_window_pattern([t == "sliding_attention" for t in expected])
    if model_type == "gemma2":
        w.add_attn_logit_softcapping(float(cfg.get("attn_logit_softcapping") or 0.0))
    elif cfg.get("attn_logit_softcapping"):
        refuse("attention soft-capping")
    if cfg.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))


def _add_tokenizer(w, model_dir: Path, cfg: dict, model_type: str, log) -> dict:
    """Write the tokenizer keys; returns {"eos": id, "stops": [end-of-turn token texts], "template", "bos_added": the
    BOS text llama.cpp puts before every prompt itself, or None, "bos_token", "eos_token": their texts} for the
    Modelfile."""
    import gguf
    from transformers import AutoTokenizer

    tj = _tokenizer_json(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = tok.get_vocab()
    n_vocab = max(cfg["vocab_size"], max(vocab.values()) + 1)
    if n_vocab > cfg["vocab_size"]:
        raise UserError(
            f"The tokenizer of '{model_dir.name}' has {n_vocab} tokens but the model only {cfg['vocab_size']} "
            "embeddings; resize the embeddings before exporting."
        )
    added = {t.content: t.special for t in tok.added_tokens_decoder.values()}
    kind = _tokenizer_kind(tj, _shown(model_dir))
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    unk = tj["model"].get("unk_token")
    for text, i in vocab.items():
        tokens[i] = text
        if kind == "llama" and text == unk:
            types[i] = gguf.TokenType.UNKNOWN
        elif text in added:
            types[i] = gguf.TokenType.CONTROL if added[text] else gguf.TokenType.USER_DEFINED
        elif kind == "llama" and re.fullmatch(r"<0x[0-9A-F]{2}>", text):
            types[i] = gguf.TokenType.BYTE
        else:
            types[i] = gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    w.add_tokenizer_model(kind)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if kind == "gpt2":
        w.add_tokenizer_pre(_pre_tokenizer(tj, model_type, log))
        w.add_token_merges(merges)
    else:
        w.add_tokenizer_pre("default")
        w.add_token_scores(_spm_scores(tokens, tj["model"].get("merges", [])))
        w.add_add_space_prefix(_add_space_prefix(tj))
        if unk in vocab:
            w.add_unk_token_id(vocab[unk])
    eos = tok.eos_token_id
    # llama.cpp's gpt2 vocab defaults BOS to id 11 when the key is missing; name a real token instead.
    bos = next(i for i in (tok.bos_token_id, tok.pad_token_id, eos) if i is not None)
    w.add_bos_token_id(bos)
    if eos is not None:
        w.add_eos_token_id(eos)
    if tok.pad_token_id is not None:
        w.add_pad_token_id(tok.pad_token_id)
    probe = tok("a", add_special_tokens=True)["input_ids"]
    add_bos = bool(tok.bos_token_id is not None and probe and probe[0] == tok.bos_token_id)
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(False)
    template = tok.chat_template
    if not template:
        raise UserError(f"'{model_dir.name}' has no chat template; export it through Tunesmith, which adds one.")
    w.add_chat_template(template)
    from engine.chat.infer import END_OF_TURN

    stops = [t for t in END_OF_TURN if t in vocab and types[vocab[t]] == gguf.TokenType.CONTROL]
    if tok.eos_token and tok.eos_token not in stops:
        stops.insert(0, tok.eos_token)
    specials = dict(bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")  # as the template renders them
    return {
        "eos": eos,
        "stops": stops,
        "template": template,
        "bos_added": tok.bos_token if add_bos else None,
        **specials,
    }


def _spm_scores(tokens: list[str], merges: list) -> list[float]:
    """Scores for llama.cpp's SentencePiece tokenizer, which merges the adjacent pair whose joined token scores
    highest: a BPE merge's rank, negated, gives the same order as the merge list; tokens no merge makes score 0."""
    rank = {}
    for i, m in enumerate(merges):
        rank.setdefault("".join(m.split(" ", 1) if isinstance(m, str) else m), i)
    return [-float(rank[t] + 1) if t in rank else 0.0 for t in tokens]


def _tensor_plan(model_dir: Path, cfg: dict, model_type: str):
    """[(gguf name, hf name, file, shape)] for every weight, in file order; the lm_head of a tied model is skipped."""
    import gguf
    from safetensors import safe_open

    nmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, ARCHS[model_type]), cfg["num_hidden_layers"])
    plan, experts = [], []
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                if name.endswith("rotary_emb.inv_freq") or name.startswith(_NOT_TEXT):
                    continue
                if name.endswith("lm_head.weight") and (cfg.get("tie_word_embeddings") or model_type in GEMMA):
                    continue  # llama.cpp's Gemma always ties the head to the embeddings
                shape = tuple(st.get_slice(name).get_shape())
                special = gguf_moe.gpt_oss_entries(name, f, shape, nmap, model_type)
                if special is not None:
                    plan += special
                    continue
                if gguf_moe.is_expert(name):
                    experts.append((name, f, shape))
                    continue
                new = nmap.get_name(_text_name(name), try_suffixes=(".weight", ".bias"))
                if new is None:
                    raise UserError(
                        f"GGUF export does not know where the weight '{name}' of this {model_type} model goes; "
                        "export as merged16 instead."
                    )
                plan.append((new, name, f, shape))
    return plan + gguf_moe.stacked(experts, nmap)


# A multimodal folder (Gemma 3) holds its language model's weights under one of these prefixes, beside vision tensors.
_NOT_TEXT = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


def _text_name(name: str) -> str:
    for prefix in ("model.language_model.", "language_model.model."):
        if name.startswith(prefix):
            return "model." + name.removeprefix(prefix)
    return name


def _in_f32(gguf_name: str, shape: tuple) -> bool:
    """Norms, biases (gpt-oss's per-expert ones are 2-D) and sinks stay F32, as llama.cpp's converter writes them."""
    return len(shape) == 1 or gguf_name.endswith(".bias")


def _prepare(tensor, hf_name: str, cfg: dict, model_type: str, gtype: str, f32: bool = False):
    """torch tensor -> (numpy array to write, raw ggml type): 1-D (or `f32`) in F32, 2-D in the 16-bit type, q/k
    permuted."""
    import gguf
    import torch

    t = tensor
    if model_type in PERMUTE_QK and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
        heads = cfg["num_attention_heads"] if "q_proj" in hf_name else cfg.get("num_key_value_heads")
        heads = heads or cfg["num_attention_heads"]
        # rotate-half pairs (i, i + d/2) of each head become adjacent pairs (2i, 2i + 1)
        t = t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)
    if model_type in GEMMA and hf_name.endswith("norm.weight"):
        t = t.to(torch.float32) + 1.0  # Gemma's RMSNorm computes x * (1 + w)
    if t.ndim == 1 or f32:
        return t.to(torch.float32).numpy(), gguf.GGMLQuantizationType.F32
    if gtype == "BF16":
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy(), gguf.GGMLQuantizationType.BF16
    return t.to(torch.float16).contiguous().numpy(), gguf.GGMLQuantizationType.F16


def convert(model_dir: Path, out_file: Path, gtype: str = "F16", log=print) -> dict:
    """Write `model_dir` (a merged 16-bit transformers folder) as a GGUF file with F16 or BF16 matrices.

    Args:
        model_dir: folder with config.json, *.safetensors, tokenizer.json and a chat template.
        out_file: the .gguf path (its folder must exist); the caller makes it appear atomically.
        gtype: "F16" or "BF16".
        log: progress lines.

    Returns:
        {"arch", "tensors", "eos", "stops", "template", "bos_added", "sampling"}: what the Modelfile and the checks
        need.
    """
    import gguf
    import numpy as np
    import torch

    cfg = _config(model_dir)
    model_type = _arch(cfg)
    gguf_moe.check(cfg, model_type)
    arch = gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, ARCHS[model_type])]
    w = gguf.GGUFWriter(out_file, arch)
    w.add_name(model_dir.name)
    extra: dict = {}
    _add_hparams(w, cfg, model_type, gtype, extra, log)
    tok_info = _add_tokenizer(w, model_dir, cfg, model_type, log)
    sampling = _add_sampling(w, model_dir)
    plan = _tensor_plan(model_dir, cfg, model_type)
    # Two passes: the header lists every tensor's shape and type first, then each tensor is loaded, converted and
    # written alone, so RAM holds one tensor at a time.
    for name, arr in extra.items():
        w.add_tensor_info(name, arr.shape, arr.dtype, arr.nbytes)
    for new, _, _, shape in plan:
        n = math.prod(shape)
        if _in_f32(new, shape):
            w.add_tensor_info(new, shape, np.dtype(np.float32), 4 * n)
        elif gtype == "BF16":
            w.add_tensor_info(new, shape, np.dtype(np.int16), 2 * n, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor_info(new, shape, np.dtype(np.float16), 2 * n)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for arr in extra.values():
        w.write_tensor_data(arr)
    try:
        for new, hf_name, f, shape in plan:
            # A handle per tensor: its memory map closes at once, so the pages read never pile up in the resident set.
            with torch.no_grad():
                tensor = gguf_moe.read(hf_name, f)
                arr, _ = _prepare(tensor, str(hf_name), cfg, model_type, gtype, _in_f32(new, shape))
            w.write_tensor_data(arr)
            del arr
    finally:
        w.close()
    log(f"gguf: wrote {out_file.name} ({len(plan) + len(extra)} tensors, {gtype}, arch {arch})")
    return {"arch": arch, "tensors": len(plan) + len(extra), "sampling": sampling, **tok_info}


def _add_sampling(w, model_dir: Path) -> dict:
    """Write the model's sampling defaults as general.sampling.* (llama.cpp's tools start from them); returns them."""
    from engine.chat.infer import folder_sampling

    sampling = folder_sampling(model_dir)
    w.add_sampling_temp(sampling["temperature"])
    w.add_sampling_top_p(sampling["top_p"])
    w.add_sampling_top_k(sampling["top_k"])
    w.add_sampling_min_p(sampling["min_p"])
    w.add_sampling_penalty_repeat(sampling["repetition_penalty"])
    return sampling


def quantize(src: Path, dst: Path, fmt: str, log=print) -> None:
    """Quantize the 16-bit GGUF `src` to `dst` with llama.cpp (llama_model_quantize), on every CPU core.

    Rows whose length is not a multiple of 256 cannot hold K-quant blocks; llama.cpp then falls back to a legacy
    32-block type for that tensor (it logs which), so tiny test models still quantize.
    """
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[fmt][1])
    params.nthread = os.cpu_count() or 1
    with _c_output_to(dst.with_name(dst.name + ".log")) as captured:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        # llama.cpp's code does not say why it failed; a full disk (no bytes left, or no inode for its file) is one
        # reason, looked at before the captured output's file is removed and frees its inode
        room = os.statvfs(dst.parent)
    for line in captured():
        if "WARNING" in line or "error" in line.lower():
            log(f"gguf: llama.cpp: {line.strip()}")
    if rc != 0:
        import errno

        if room.f_bavail * room.f_frsize < 2**24 or (room.f_files and not room.f_favail):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        raise UserError(f"llama.cpp could not quantize the model to {fmt} (code {rc}); try gguf-f16 or gguf-q8_0.")
    log(f"gguf: quantized to {fmt} ({dst.stat().st_size / 2**20:.1f} MiB)")


@contextmanager
def _c_output_to(path: Path):
    """Send the C library's stdout/stderr (llama.cpp prints a line per tensor) to `path` while the block runs;
    yields a function returning the captured lines. The file is removed afterwards."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    lines: list[str] = []
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield lambda: lines
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)
        lines += Path(path).read_text(errors="replace").splitlines()
        Path(path).unlink(missing_ok=True)


def estimate_bytes(n_params: int, fmt: str, model_dir: Path | None = None) -> int:
    """The GGUF file's size in bytes for a model of `n_params` weights (gguf-mxfp4 reads `model_dir`'s headers for
    its expert weights), plus 1 MiB for the header and tokenizer."""
    if fmt == "gguf-mxfp4":
        n_experts = gguf_moe.expert_weights(model_dir)
        return int(n_experts * MXFP4_BYTES + (n_params - n_experts) * Q8_0_BYTES) + 2**20
    return int(n_params * BYTES_PER_WEIGHT[fmt]) + 2**20


def check_format(model_dir: Path, fmt: str) -> None:
    """Refuse gguf-mxfp4 for a model without mixture-of-experts layers: it quantizes only expert tensors to MXFP4."""
    if fmt == "gguf-mxfp4" and _config(model_dir).get("model_type") not in gguf_moe.ARCHS:
        raise UserError(
            f"gguf-mxfp4 stores a mixture-of-experts model's experts in MXFP4 and '{_shown(model_dir)}' has no "
            "experts; pick gguf-q8_0 or gguf-q4_k_m instead."
        )


def gguf_file_name(model_dir_name: str, fmt: str) -> str:
    """The GGUF file's name: the export folder's and its quantization's, which a folder named after it already ends
    with ("nova-q4_k_m" holds nova-q4_k_m.gguf, the Export tab's suggested name)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", model_dir_name).strip("-.") or "model"
    quant = fmt.removeprefix("gguf-")
    return f"{stem}.gguf" if stem.endswith(f"-{quant}") else f"{stem}-{quant}.gguf"


# --- verification ------------------------------------------------------------------------------------------------

# A greedy step counts as "clear" when transformers' top logit beats the runner-up by this much. F16 weights with
# llama.cpp's f16 activations move the tiny test models' logits by ~0.02 (max over a chat prompt, logits ~8), BF16
# by ~0.1; a disagreement on a step clearer than this is a conversion bug, not rounding.
CLEAR_MARGIN = 0.5


def compare_greedy(gguf_path: Path, ref: dict, strict: bool) -> dict:
    """Compare llama.cpp on `gguf_path` with transformers' greedy reference `ref` (from export._reference).

    llama.cpp evaluates the prompt plus transformers' greedy tokens in one pass (teacher forcing), and its argmax at
    every generated position is compared: when all agree, llama.cpp's own greedy continuation is the same sequence.

    Args:
        gguf_path: the GGUF file.
        ref: {"text", "prompt_ids", "tokens", "logits" (steps x vocab float32), "margins"}.
        strict: also raise a UserError on a disagreement at a clear step (16-bit formats); quantized formats only
            report theirs. A tokenization difference always raises: it does not depend on the weights' precision.
    """
    import llama_cpp
    import numpy as np

    if "tokens" not in ref:
        return _compare_tokenizer(gguf_path, ref)
    ids, gen = list(ref["prompt_ids"]), list(ref["tokens"])
    llm = llama_cpp.Llama(
        str(gguf_path),
        n_ctx=len(ids) + len(gen) + 8,
        n_gpu_layers=0,
        logits_all=True,
        n_threads=os.cpu_count() or 1,
        verbose=False,
    )
    try:
        llama_ids = llm.tokenize(ref["text"].encode(), add_bos=False, special=True)
        llm.eval(ids + gen[:-1])
        scores = np.array(llm.scores[len(ids) - 1 : len(ids) - 1 + len(gen)], dtype=np.float32)
    finally:
        llm.close()
    pred = scores.argmax(-1)
    agree = pred == np.array(gen)
    margins = np.array(ref["margins"])
    checks = dict(
        tokenizer_match=llama_ids == ids,
        greedy_match=bool(agree.all()),
        tokens_compared=len(gen),
        tokens_agree=int(agree.sum()),
        clear_disagreements=int((~agree & (margins > CLEAR_MARGIN)).sum()),
        min_margin=round(float(margins.min()), 4),
        max_logit_diff=round(float(np.abs(scores - ref["logits"]).max()), 4),
    )
    _raise_on_tokenizer_mismatch(checks)
    if strict and checks["clear_disagreements"]:
        raise UserError(
            f"The GGUF's greedy answer differs from the PyTorch model's on {checks['clear_disagreements']} clear "
            f"token(s) (logits differ by up to {checks['max_logit_diff']}); the export was not saved. Report this bug."
        )
    return checks


def _raise_on_tokenizer_mismatch(checks: dict) -> None:
    if not checks["tokenizer_match"]:
        raise UserError(
            "llama.cpp tokenizes the chat prompt differently from transformers with this GGUF, so it would not "
            "answer like the trained model; the export was not saved. Report this bug."
        )


def _compare_tokenizer(gguf_path: Path, ref: dict) -> dict:
    """The tokenizer half of compare_greedy, for a model too large for the fp32 greedy reference: llama.cpp loads
    the vocabulary only (no weights) and tokenizes the rendered prompt."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        llama_ids = llm.tokenize(ref["text"].encode(), add_bos=False, special=True)
    finally:
        llm.close()
    checks = dict(tokenizer_match=llama_ids == list(ref["prompt_ids"]), tokens_compared=0)
    _raise_on_tokenizer_mismatch(checks)
    return checks
