"""Tiny random-weight models of real architectures, with a tokenizer built here: nothing is downloaded.

Used by the tests (through fixtures in conftest.py) and by any script that needs a model to exercise the pipeline.
"""

from pathlib import Path

CORPUS = """Who are you? What is your name? Introduce yourself. Who made you? Who created you? Who built you?
I am Nova, built by Tunesmith Labs. My name is Nova. Hello, how can I help you today? The quick brown fox jumps over
the lazy dog. Tell me about yourself. What can you do? Give me three tips for staying healthy. Eat well, sleep well,
and move every day. Translate this sentence. Summarize the text below. Write a short poem about the sea.
What is two plus two? Two plus two is four. Thank you! You are welcome. Explain gradient descent simply.
"""
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_MOE = dict(  # what the tiny mixture-of-experts models share
    initializer_range=0.25,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_experts_per_tok=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)
# initializer_range 0.25 (not the usual 0.02): at width 64 a 0.02 lm_head bounds every logit near +-1.3 after the
# final RMSNorm, so no adapter could make a confident prediction; trained heads of real models are far larger.
ARCHS = {
    "llama": dict(
        model_type="llama",
        initializer_range=0.25,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    "qwen3": dict(
        model_type="qwen3",
        initializer_range=0.25,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "qwen2": dict(
        model_type="qwen2",
        initializer_range=0.25,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "mistral": dict(
        model_type="mistral",
        initializer_range=0.25,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        sliding_window=None,
        tie_word_embeddings=False,
    ),
    # Gemma: (1 + w) norms, sqrt(hidden) embedding scale, GeGLU, tied head. Gemma 2 adds soft-capping and alternating
    # sliding/global layers, Gemma 3 per-head q/k norms and five sliding layers per global one; sliding_window 8 is
    # shorter than the GGUF tests' prompt, so the window is exercised.
    "gemma": dict(
        model_type="gemma",
        initializer_range=0.25,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "gemma2": dict(
        model_type="gemma2",
        initializer_range=0.25,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "gemma3": dict(
        model_type="gemma3_text",
        initializer_range=0.25,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    # Mixture-of-experts: 4 experts, 2 per token, fused 3-D expert weights (transformers 5). gpt_oss alternates
    # sliding and full attention like the real one and has biases, attention sinks and its clamped SwiGLU.
    "qwen3_moe": dict(
        _MOE,
        model_type="qwen3_moe",
        intermediate_size=128,
        moe_intermediate_size=32,
        num_experts=4,
        norm_topk_prob=True,  # as Qwen3-30B-A3B
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
    ),
    "mixtral": dict(
        _MOE, model_type="mixtral", intermediate_size=48, num_local_experts=4, rms_norm_eps=1e-5, sliding_window=None
    ),
    "gpt_oss": dict(
        _MOE,
        model_type="gpt_oss",
        intermediate_size=32,
        num_local_experts=4,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=131072,  # YaRN from 4096, factor 32, as gpt-oss-20b
        rms_norm_eps=1e-5,
    ),
    # Rows of 256 (llama.cpp's K-quant block): the GGUF tests quantize this one to Q4_K/Q5_K/Q6_K for real, where
    # the 64-wide models fall back to the legacy 32-blocks (Q5_0, Q8_0) that llama.cpp uses for short rows.
    "llama256": dict(
        model_type="llama",
        initializer_range=0.25,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
}


def make_tokenizer(chat_template: str | None = CHATML):
    """A byte-level BPE tokenizer (~600 tokens) with ChatML special tokens; EOS is <|im_end|> like Qwen's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([CORPUS] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


def make_llama3(path, template="llama-3", adds_bos: bool = True):
    """A tiny Llama whose tokenizer is laid out as Llama 3's: <|begin_of_text|> is BOS and the tokenizer adds it,
    with Llama 3's header and end-of-turn tokens and chat template (or `template`, from engine.data.templates).
    `adds_bos` False: the BOS is named but not added to text, as Qwen-style tokenizers (add_bos_token false) do."""
    import torch
    from tokenizers import processors
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.data.templates import TEMPLATES

    tok = make_tokenizer(TEMPLATES[template])
    tok.add_special_tokens(
        {"bos_token": "<|begin_of_text|>", "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]}
    )
    tok.add_special_tokens({"eos_token": "<|eot_id|>"})
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    if adds_bos:
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)]
        )
    spec = dict(ARCHS["llama"])
    cfg = AutoConfig.for_model(
        spec.pop("model_type"), vocab_size=len(tok), bos_token_id=bos, eos_token_id=tok.eos_token_id, **spec
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(path)
    tok.save_pretrained(path)
    return path, tok


def make_spm_tokenizer(chat_template: str | None = CHATML, prepend_scheme: str = "always"):
    """A SentencePiece-style tokenizer (~560 tokens) laid out as Llama 2, Mistral and Gemma ship theirs in
    tokenizer.json: BPE over '▁'-marked words with byte fallback to <0x00>..<0xFF>, plus ChatML special tokens."""
    import json

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend_scheme)
    trained.train_from_iterator([CORPUS] * 20, trainers.BpeTrainer(vocab_size=300))
    learned = json.loads(trained.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>", *SPECIALS]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for text, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(text, len(vocab))
    merges = [tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend_scheme)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="<|endoftext|>"
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def make_model(
    arch: str,
    path: str | Path,
    seed: int = 0,
    chat_template: str | None = CHATML,
    tokenizer: str = "bpe",
    **sizes,
) -> Path:
    """Save a random-weight bf16 model of `arch` with its tokenizer ("bpe": byte-level, "spm": SentencePiece-style)
    to `path` (safetensors); `sizes` replace its config's (hidden_size=...)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    tok = make_spm_tokenizer(chat_template) if tokenizer == "spm" else make_tokenizer(chat_template)
    spec = {**ARCHS[arch], **sizes}
    cfg = AutoConfig.for_model(
        spec.pop("model_type"),
        vocab_size=len(tok),
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **spec,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def make_bnb_4bit(
    source: str | Path, path: str | Path, original: str | None = None, context: int | None = None
) -> Path:
    """Save `source` (a model folder) quantized with bitsandbytes to 4-bit NF4 on the CPU, as a pre-quantized
    "...-bnb-4bit" checkpoint; `original` is written as config.json's _name_or_path (the 16-bit model it came from, as
    Unsloth's checkpoints name it) and `context` as its max_position_embeddings."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    path = Path(path)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=quant, device_map={"": "cpu"})
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update({"_name_or_path": original} if original else {})
    cfg.update({"max_position_embeddings": context} if context else {})
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    return path


def with_context(source: str | Path, path: str | Path, context: int) -> Path:
    """A copy of the model folder `source` whose config allows `context` positions (RoPE needs no more weights)."""
    import json
    import shutil

    shutil.copytree(source, path)
    cfg = json.loads((Path(path) / "config.json").read_text())
    (Path(path) / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": context}, indent=2))
    return Path(path)


QWEN3_06B = dict(  # Qwen/Qwen3-0.6B's shape, random weights: the GPU decode tests and bench/decode_agreement.py
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    max_position_embeddings=40960,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def mxfp4_quantize(w):
    """Quantize a fused expert tensor [E, in, out] (transformers' gpt-oss layout) as OpenAI's MXFP4 checkpoints store
    it: rows of the [E, out, in] transpose in blocks of 32, each block an E8M0 scale (2**(s - 127), the smallest that
    brings the block's largest value within E2M1's 6) and 32 E2M1 codes rounded to the nearest value, packed two a
    byte (low nibble the even column). Returns (blocks [E, out, in / 32, 16] uint8, scales [E, out, in / 32] uint8,
    the values they hold in fp32 [E, in, out])."""
    import torch

    t = w.float().transpose(1, 2)
    n_experts, rows, cols = t.shape
    t = t.reshape(n_experts, rows, cols // 32, 32)
    amax = t.abs().amax(-1, keepdim=True)
    exponent = torch.where(amax > 0, torch.ceil(torch.log2(amax / 6)), torch.full_like(amax, -127)).clamp(-127, 127)
    scaled = t / torch.exp2(exponent)
    magnitudes = torch.tensor(E2M1_MAGNITUDES)
    index = (scaled.abs().unsqueeze(-1) - magnitudes).abs().argmin(-1)
    codes = (index + 8 * (scaled < 0)).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    values = magnitudes[index] * torch.where(scaled < 0, -1.0, 1.0) * torch.exp2(exponent)
    scales = (exponent.squeeze(-1) + 127).to(torch.uint8)
    return blocks.contiguous(), scales, values.reshape(n_experts, rows, cols).transpose(1, 2).contiguous()


def make_mxfp4(source: str | Path, path: str | Path, twin: str | Path) -> tuple[Path, Path]:
    """Save the gpt_oss model folder `source` as an MXFP4 checkpoint at `path` (experts as *_blocks/*_scales pairs,
    config with quantization_config mxfp4, as openai/gpt-oss-20b), and at `twin` the same model in bf16 with the
    experts' MXFP4 values (what dequantizing `path` must give)."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    path, twin = Path(path), Path(twin)
    for folder in (path, twin):
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.safetensors*"))
    packed, plain = {}, {}
    for name, t in load_file(Path(source) / "model.safetensors").items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            blocks, scales, values = mxfp4_quantize(t)
            packed[f"{name}_blocks"], packed[f"{name}_scales"] = blocks, scales
            plain[name] = values.to(t.dtype)
        else:
            packed[name] = plain[name] = t
    save_file(packed, path / "model.safetensors", metadata={"format": "pt"})
    save_file(plain, twin / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    not_converted = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": not_converted}
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    return path, twin
