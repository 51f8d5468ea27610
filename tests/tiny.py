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
    arch: str, path: str | Path, seed: int = 0, chat_template: str | None = CHATML, tokenizer: str = "bpe"
) -> Path:
    """Save a random-weight bf16 model of `arch` with its tokenizer ("bpe": byte-level, "spm": SentencePiece-style)
    to `path` (safetensors)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    tok = make_spm_tokenizer(chat_template) if tokenizer == "spm" else make_tokenizer(chat_template)
    spec = dict(ARCHS[arch])
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
