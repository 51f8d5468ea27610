"""GGUF export and chat with real llama.cpp (llama-cpp-python) on the CPU: tiny models of every supported family
through every GGUF format, an identity tune answered by its quantized GGUF, the Modelfile, and the refusals."""

import json
import shutil
import subprocess
import sys

import pytest
import test_e2e_identity
from conftest import IDENTITY_ANSWER, ROOT
from helpers import log_of, wait_for
from tiny import make_llama3

from engine import api

# gguf-mxfp4 is for mixture-of-experts models only (tests/test_gguf_mxfp4.py)
GGUF_FORMATS = [f for f in api.EXPORT_FORMATS if f.startswith("gguf-") and f != "gguf-mxfp4"]
# Formats whose argmax must agree with PyTorch wherever the choice is clear (engine.export.gguf.CLEAR_MARGIN); on the
# 64-wide models Q8_0 is near-lossless too. The K-quants lose more on random weights, so they are checked for loading,
# types and size here, and for the right answer after training in test_identity_tune_answers_from_gguf.
NEAR_LOSSLESS = ("gguf-f16", "gguf-bf16", "gguf-q8_0")
PRE = {"llama": "gpt-2", "mistral": "gpt-2", "qwen2": "qwen2", "qwen3": "gpt-2"}
MATRIX_TYPE = {"gguf-f16": "F16", "gguf-bf16": "BF16", "gguf-q8_0": "Q8_0"}


def quiet(_msg):
    pass


def tensor_types(path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    return {t.name: t.tensor_type.name for t in reader.tensors}


def header(path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    out = {}
    for name in ("general.architecture", "tokenizer.chat_template", "tokenizer.ggml.pre", "tokenizer.ggml.model"):
        out[name] = bytes(reader.fields[name].parts[-1]).decode()
    arch = out["general.architecture"]
    out["context_length"] = int(reader.fields[f"{arch}.context_length"].parts[-1][0])
    out["eos"] = int(reader.fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_llama, tiny_qwen3):
    from tiny import make_model

    root = tmp_path_factory.mktemp("gguf-models")
    extra = {a: make_model(a, root / f"tiny-{a}") for a in ("qwen2", "mistral", "llama256")}
    return {"llama": tiny_llama, "qwen3": tiny_qwen3, **extra}


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_every_gguf_format_round_trips(arch, models, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models[arch])
    sizes = {}
    for fmt in GGUF_FORMATS:
        res = api.export(str(models[arch]), fmt, tmp_path / fmt, log=quiet)
        (gguf_file,) = res.path.glob("*.gguf")
        assert res.files == sorted(["Modelfile", gguf_file.name])
        assert not any(p.name.startswith(".") for p in res.path.iterdir()), "merged and 16-bit intermediates removed"
        sizes[fmt] = gguf_file.stat().st_size
        assert res.checks["tokenizer_match"] and res.checks["tokens_compared"] == 16, res.checks
        if fmt in NEAR_LOSSLESS:
            assert res.checks["clear_disagreements"] == 0, res.checks
        types = tensor_types(gguf_file)
        assert types["output_norm.weight"] == "F32" and types["blk.0.attn_norm.weight"] == "F32"
        if fmt in MATRIX_TYPE:
            assert types["blk.0.attn_q.weight"] == MATRIX_TYPE[fmt]
        if arch == "qwen3":
            assert types["blk.0.attn_q_norm.weight"] == "F32"
        if arch == "qwen2":
            assert types["blk.0.attn_q.bias"] == "F32"
        head = header(gguf_file)
        assert head["general.architecture"] == {"mistral": "llama"}.get(arch, arch)
        assert head["tokenizer.chat_template"] == tok.chat_template
        # The name follows the split regex in the saved tokenizer.json, not the architecture: transformers rebuilds a
        # qwen2 model's tokenizer with Qwen's regex (Qwen2Tokenizer); the others keep the test tokenizer's GPT-2 split.
        assert head["tokenizer.ggml.model"] == "gpt2" and head["tokenizer.ggml.pre"] == PRE[arch]
        assert head["context_length"] == 512 and head["eos"] == tok.eos_token_id
        chat = api.Chat(str(gguf_file), device="cpu")
        try:
            assert isinstance(chat.reply([{"role": "user", "content": "Who are you?"}], max_new_tokens=8), str)
        finally:
            chat.close()
    assert max(sizes[f] for f in GGUF_FORMATS[2:]) < sizes["gguf-f16"]


def test_k_quants_are_real_on_rows_of_256(models, tmp_path):
    """The 64-wide models' rows are too short for K-quant blocks (llama.cpp falls back to Q5_0/Q8_0); 256 are not."""
    for fmt, kind in (("gguf-q4_k_m", "Q4_K"), ("gguf-q5_k_m", "Q5_K"), ("gguf-q6_k", "Q6_K")):
        res = api.export(str(models["llama256"]), fmt, tmp_path / fmt, log=quiet)
        (gguf_file,) = res.path.glob("*.gguf")
        assert kind in set(tensor_types(gguf_file).values())
        assert res.checks["tokenizer_match"]


def test_identity_tune_answers_from_gguf(tiny_llama, identity_file, runs, tmp_path):
    handle = api.start(test_e2e_identity.identity_spec(tiny_llama, identity_file))
    st = wait_for(handle)
    assert st.state == "done", log_of(st)

    # Exact greedy equality for F16: on a random model a near tie (top-2 logits within llama.cpp's f16-activation
    # rounding, ~0.05 here) may flip a token, so it is checked on the tuned model, whose answer tokens win clearly.
    res = api.export(str(st.run_dir), "gguf-f16", tmp_path / "f16", log=quiet)
    assert res.checks["greedy_match"] and res.checks["tokens_compared"] == 16, res.checks
    assert res.checks["max_logit_diff_fp32"] < 1e-4  # the merge itself, as for merged16

    lines = (res.path / "Modelfile").read_text().splitlines()
    (gguf_file,) = res.path.glob("*.gguf")
    assert lines[0] == f"FROM ./{gguf_file.name}"
    text = "\n".join(lines)
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>' in text
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>"' in lines
    assert {"PARAMETER temperature 0.6", "PARAMETER top_p 0.9", "PARAMETER repeat_penalty 1.0"} <= set(lines)  # Llama 3

    for fmt in ("gguf-f16", "gguf-q8_0", "gguf-q4_k_m"):
        folder = res.path if fmt == "gguf-f16" else api.export(str(st.run_dir), fmt, tmp_path / fmt, log=quiet).path
        (gguf_file,) = folder.glob("*.gguf")
        chat = api.Chat(str(gguf_file), device="cpu")
        try:
            for question in ("Who are you?", "What is your name?"):
                assert chat.reply([{"role": "user", "content": question}]) == IDENTITY_ANSWER, fmt
            streamed = list(chat.stream([{"role": "user", "content": "Who made you?"}]))
            assert streamed[-1] == IDENTITY_ANSWER and len(streamed) > 1, (fmt, streamed)
        finally:
            chat.close()

    out = subprocess.run(
        [sys.executable, "-m", "engine", "chat", str(gguf_file), "--prompt", "Who are you?"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == IDENTITY_ANSWER


def test_unsupported_architecture_is_refused(tiny_llama, tmp_path):
    folder = tmp_path / "falcon-like"
    shutil.copytree(tiny_llama, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon"}))
    with pytest.raises(api.UserError, match="'falcon' architecture.*gemma, gemma2, gemma3_text, gpt_oss, llama"):
        api.export(str(folder), "gguf-q4_k_m", tmp_path / "out", log=quiet)
    assert not (tmp_path / "out").exists()


def test_unigram_tokenizer_is_refused_with_a_sentence(tiny_llama, tmp_path):
    """A SentencePiece Unigram tokenizer (T5-style), built for real, disables GGUF with a sentence saying what to do."""
    from tiny import CORPUS
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    folder = tmp_path / "unigram-llama"
    shutil.copytree(tiny_llama, folder)
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator([CORPUS] * 20, trainers.UnigramTrainer(vocab_size=200, unk_token="<unk>"))
    unigram.save(str(folder / "tokenizer.json"))
    sentence = (
        "GGUF export cannot convert the tokenizer of 'unigram-llama': it is a SentencePiece Unigram model, and the "
        "export writes only byte-level BPE tokenizers (Llama 3, Qwen) and SentencePiece BPE tokenizers with byte "
        "fallback (Llama 2, Mistral, Gemma); export as merged16 instead."
    )
    assert api.gguf_support(str(folder)) == (False, sentence)
    with pytest.raises(api.UserError) as err:
        api.export(str(folder), "gguf-q4_k_m", tmp_path / "out", log=quiet)
    assert str(err.value) == sentence and not (tmp_path / "out").exists()


def test_refusal_names_the_run_not_its_adapter_folder(tiny_llama, tmp_path):
    """A run keeps its tokenizer in `adapter/`: the sentence names the run, the folder the user picked."""
    from engine.export.gguf import supported

    adapter = tmp_path / "20261122-my-run" / "adapter"
    adapter.mkdir(parents=True)
    tj = json.loads((tiny_llama / "tokenizer.json").read_text())
    tj["model"]["type"] = "Unigram"
    (adapter / "tokenizer.json").write_text(json.dumps(tj))
    ok, why = supported(tiny_llama, adapter)
    assert not ok and "the tokenizer of '20261122-my-run'" in why


def test_refusal_names_a_full_fine_tune_run_not_its_model_folder(tiny_llama, tmp_path):
    """A full fine-tune keeps its weights in `model/`: `export RUN --format gguf-mxfp4` said "'model' has no
    experts", of a folder the user never named."""
    from engine.export.gguf import check_format

    model = tmp_path / "20261122-my-run" / "model"
    shutil.copytree(tiny_llama, model)
    (model.parent / "job.yaml").write_text(f"model: {tiny_llama}\ndata: d.jsonl\nmethod: full\n")
    with pytest.raises(api.UserError, match="and '20261122-my-run' has no experts"):
        check_format(model, "gguf-mxfp4")


def test_sentencepiece_style_tokenizer_is_refused(tiny_llama, tmp_path):
    folder = tmp_path / "spm-llama"
    shutil.copytree(tiny_llama, folder)
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(api.UserError, match="SentencePiece"):
        api.export(str(folder), "gguf-f16", tmp_path / "out", log=quiet)
    assert not (tmp_path / "out").exists()


def test_existing_output_folder_is_refused(tiny_qwen3, tmp_path):
    out = tmp_path / "exports" / "mine"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    with pytest.raises(api.UserError, match="already exists"):
        api.export(str(tiny_qwen3), "gguf-q8_0", out, log=quiet)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in out.parent.iterdir()] == ["mine"]


def test_interrupted_export_leaves_nothing(tiny_qwen3, tmp_path, monkeypatch):
    from engine.export import gguf

    def interrupt(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "compare_greedy", interrupt)  # after the GGUF is written, before the folder is done
    with pytest.raises(KeyboardInterrupt):
        api.export(str(tiny_qwen3), "gguf-q4_k_m", tmp_path / "exports" / "q4", log=quiet)
    assert list((tmp_path / "exports").iterdir()) == []


def test_pre_tokenizer_names_follow_the_split_regex():
    from engine.export import gguf

    def split(regex):
        return {
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated"},
                    {"type": "ByteLevel", "use_regex": False},
                ],
            }
        }

    assert gguf._pre_tokenizer(split(gguf.QWEN2_SPLIT), "qwen3", quiet) == "qwen2"
    assert gguf._pre_tokenizer(split(gguf.LLAMA3_SPLIT), "llama", quiet) == "llama-bpe"
    assert gguf._pre_tokenizer({"pre_tokenizer": {"type": "ByteLevel"}}, "llama", quiet) == "gpt-2"
    assert gguf._pre_tokenizer(split("x+"), "qwen2", quiet) == "qwen2"
    assert gguf._pre_tokenizer(split("x+"), "llama", quiet) == "default"


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory, tiny_llama):
    """A PEFT adapter on every linear layer with random (non-zero) B, rsLoRA and a per-module alpha."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        use_rslora=True,
        alpha_pattern={"down_proj": 4},
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    folder = tmp_path_factory.mktemp("adapters") / "random-adapter"
    model.save_pretrained(folder)  # a bare adapter folder: the tokenizer comes from the base
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_llama)
    return folder


def test_streaming_merge_equals_peft_merge(tiny_llama, random_adapter, tmp_path, monkeypatch):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from engine.export import merge as export_mod

    monkeypatch.setattr(export_mod, "SHARD_BYTES", 100_000)  # several shards and an index, as for a large model
    res = api.export(str(random_adapter), "merged16", tmp_path / "merged", log=quiet)
    assert res.checks["merge_check_layers"] == "2 of 2" and res.checks["max_logit_diff_fp32"] < 1e-4, res.checks
    index = json.loads((res.path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in res.path.glob("model-*.safetensors"))
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == shards
    assert {"config.json", "tokenizer.json", "generation_config.json"} <= set(res.files)
    merged = {k: v for f in shards for k, v in load_file(res.path / f).items()}
    assert set(index["weight_map"]) == set(merged)

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    expected = PeftModel.from_pretrained(base, random_adapter).merge_and_unload().to(torch.bfloat16).state_dict()
    assert set(expected) == set(merged)
    for name, t in expected.items():  # the same fp32 arithmetic as PEFT's merge, then one rounding to bf16
        assert merged[name].dtype == torch.bfloat16 and torch.equal(merged[name], t), name


def test_merge_of_a_model_too_large_for_ram_checks_fewer_layers(random_adapter, tmp_path, monkeypatch):
    """Above the RAM limit the merge check runs on the first CHECK_LAYERS layers and the GGUF is checked for its
    tokenizer only (the fp32 greedy reference needs the whole model); both say so in the checks."""
    from engine.export import merge as export_mod

    monkeypatch.setattr(export_mod, "fits_in_ram", lambda n_bytes: False)
    monkeypatch.setattr(export_mod, "CHECK_LAYERS", 1)
    res = api.export(str(random_adapter), "gguf-f16", tmp_path / "big", log=quiet)
    assert res.checks["merge_check_layers"] == "1 of 2" and res.checks["max_logit_diff_fp32"] < 1e-4, res.checks
    assert res.checks["greedy_check"].startswith("skipped: the fp32 model")
    assert res.checks["tokenizer_match"] and res.checks["tokens_compared"] == 0


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3"])
def test_gemma_round_trips_through_f16(arch, tmp_path):
    import gguf
    import numpy as np
    from safetensors.torch import load_file
    from tiny import make_model

    folder = make_model(arch, tmp_path / f"tiny-{arch}")
    res = api.export(str(folder), "gguf-f16", tmp_path / "f16", log=quiet)
    assert res.checks["tokenizer_match"] and res.checks["greedy_match"], res.checks
    assert res.checks["tokens_compared"] == 16 and res.checks["clear_disagreements"] == 0, res.checks
    (gguf_file,) = res.path.glob("*.gguf")
    reader = gguf.GGUFReader(gguf_file)
    name = {"gemma3": "gemma3"}.get(arch, arch)
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == name

    def field(key):
        f = reader.fields.get(f"{name}.{key}")
        return None if f is None else float(f.parts[-1][0])

    tensors = {t.name: t for t in reader.tensors}
    weights = load_file(folder / "model.safetensors")
    for hf, ours in (
        ("model.norm.weight", "output_norm.weight"),
        ("model.layers.1.input_layernorm.weight", "blk.1.attn_norm.weight"),
    ):
        np.testing.assert_array_equal(np.asarray(tensors[ours].data), weights[hf].float().numpy() + 1)
    assert "output.weight" not in tensors  # the head is the embedding
    if arch == "gemma2":
        assert field("attn_logit_softcapping") == 50.0 and field("final_logit_softcapping") == 30.0
    if arch != "gemma":
        assert field("attention.sliding_window") == 8  # shorter than the prompt: the window is exercised
    if arch == "gemma3":
        assert tensors["blk.0.attn_q_norm.weight"].tensor_type.name == "F32"


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3"])
def test_gemma_quantized_formats(arch, tmp_path):
    """Q8_0 and Q4_K_M of each Gemma: llama.cpp loads and chats with them, Q8_0 agrees with PyTorch on every clear
    token, and the file and its Modelfile carry Gemma's sampling defaults. At width 64 llama.cpp stores Q4_K_M's
    matrices in its 32-block fallback types; test_gemma3_k_quants_are_real_on_rows_of_256 covers real K-quants."""
    import gguf
    from tiny import make_model

    folder = make_model(arch, tmp_path / f"tiny-{arch}")
    sizes = {}
    for fmt in ("gguf-q8_0", "gguf-q4_k_m"):
        res = api.export(str(folder), fmt, tmp_path / fmt, log=quiet)
        assert res.checks["tokenizer_match"] and res.checks["tokens_compared"] == 16, res.checks
        if fmt == "gguf-q8_0":
            assert res.checks["clear_disagreements"] == 0, res.checks
        (gguf_file,) = res.path.glob("*.gguf")
        sizes[fmt] = gguf_file.stat().st_size
        types = tensor_types(gguf_file)
        assert types["blk.0.attn_norm.weight"] == "F32" and "output.weight" not in types
        assert types["blk.0.attn_q.weight"] not in ("F16", "BF16", "F32")
        if fmt == "gguf-q8_0":
            assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == "Q8_0"
        reader = gguf.GGUFReader(gguf_file)
        assert int(reader.fields["general.sampling.top_k"].parts[-1][0]) == 64
        assert api.sampling_defaults(str(gguf_file)) == dict(
            temperature=1.0, top_p=0.95, top_k=64, min_p=0.0, repetition_penalty=1.0
        )
        lines = (res.path / "Modelfile").read_text().splitlines()
        assert {"PARAMETER temperature 1.0", "PARAMETER top_p 0.95", "PARAMETER top_k 64"} <= set(lines)
        chat = api.Chat(str(gguf_file), device="cpu")
        try:
            streamed, replied = api.ReplyStats(), api.ReplyStats()
            ask = [{"role": "user", "content": "Who are you?"}]
            text = list(chat.stream(ask, max_new_tokens=8, stats=streamed))
            assert (text or [""])[-1] == chat.reply(ask, max_new_tokens=8, stats=replied)
            assert 0 < streamed.tokens == replied.tokens <= 8 and streamed.seconds > 0  # one stream chunk per token
        finally:
            chat.close()
    assert sizes["gguf-q4_k_m"] < sizes["gguf-q8_0"]


def test_gemma3_k_quants_are_real_on_rows_of_256(tmp_path, monkeypatch):
    """A 256-wide Gemma 3 with a SentencePiece-style vocabulary (as Gemma ships): Q4_K_M stores real Q4_K blocks (the
    tied embedding, which is also the head, in Q6_K) and still gives PyTorch's greedy answer."""
    import tiny

    wide = dict(tiny.ARCHS["gemma3"], hidden_size=256, intermediate_size=512, head_dim=64, query_pre_attn_scalar=64)
    monkeypatch.setitem(tiny.ARCHS, "gemma3-256", wide)
    folder = tiny.make_model("gemma3-256", tmp_path / "gemma3-256", tokenizer="spm")
    res = api.export(str(folder), "gguf-q4_k_m", tmp_path / "q4", log=quiet)
    assert res.checks["tokenizer_match"] and res.checks["clear_disagreements"] == 0, res.checks
    (gguf_file,) = res.path.glob("*.gguf")
    types = tensor_types(gguf_file)
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["token_embd.weight"] == "Q6_K"


# Texts whose transformers ids llama.cpp must reproduce with a SentencePiece-style vocabulary: ChatML turns, runs of
# spaces and newlines, and characters outside the vocabulary (byte fallback to <0xXX> tokens).
SPM_TEXTS = [
    "Hello, who are you?",
    "<|im_start|>user\nHi  there\n\nnew   line<|im_end|>\n<|im_start|>assistant\n",
    "héllo wörld 🙂 ok",
    "Who made you? I am Nova, built by Tunesmith Labs.",
]


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
def test_sentencepiece_style_tokenizer_round_trips(arch, tmp_path):
    import gguf
    import llama_cpp
    from tiny import make_model
    from transformers import AutoTokenizer

    folder = make_model(arch, tmp_path / f"spm-{arch}", tokenizer="spm")
    res = api.export(str(folder), "gguf-f16", tmp_path / "f16", log=quiet)
    assert res.checks["tokenizer_match"] and res.checks["greedy_match"], res.checks
    (gguf_file,) = res.path.glob("*.gguf")
    assert header(gguf_file)["tokenizer.ggml.model"] == "llama"
    reader = gguf.GGUFReader(gguf_file)
    types = [
        int(reader.fields["tokenizer.ggml.token_type"].parts[i][0])
        for i in reader.fields["tokenizer.ggml.token_type"].data
    ]
    assert types.count(gguf.TokenType.BYTE) == 256 and types.count(gguf.TokenType.UNKNOWN) == 1
    tok = AutoTokenizer.from_pretrained(folder)
    llm = llama_cpp.Llama(str(gguf_file), vocab_only=True, verbose=False)
    try:
        for text in SPM_TEXTS:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
            # llama.cpp keeps the leading space of the first '▁' when it detokenizes a fragment
            assert llm.detokenize(ids, special=True).decode().removeprefix(" ") == tok.decode(ids), text
    finally:
        llm.close()


def test_hub_upload_needs_a_token(tiny_qwen3, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from engine.models import hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # nor a stored login
    res = api.export(str(tiny_qwen3), "merged16", tmp_path / "m", log=quiet)
    with pytest.raises(api.UserError, match="needs a write token: set HF_TOKEN"):
        hub.push(res.path, "someone/tiny")


def test_failed_hub_upload_never_shows_the_token_and_keeps_the_export(tiny_qwen3, tmp_path):
    """Offline (conftest sets HF_HUB_OFFLINE) the upload fails for real; the token must appear nowhere."""
    import hashlib
    import os

    secret = "hf_tunesmithTestToken0123456789abcdefXYZ"
    out = tmp_path / "exports" / "m16"
    env = {**os.environ, "HF_TOKEN": secret, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "engine", "export", str(tiny_qwen3), "--format", "merged16", "--out", str(out)]
    run = subprocess.run(
        [*cmd, "--push-to-hub", "someone/tiny", "--private"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 2, run.stderr
    assert "error: Uploading 'm16' to 'someone/tiny' failed" in run.stderr and "export is complete" in run.stderr
    assert secret not in run.stdout + run.stderr
    assert json.loads(run.stdout)["path"] == str(out)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    assert "model.safetensors" in files and not any(n.startswith(".") for n in files)
    for p in tmp_path.rglob("*"):
        assert not p.is_file() or secret.encode() not in p.read_bytes(), p

    from engine.models import hub

    lines = []
    with pytest.raises(api.UserError) as err:
        hub.push(out, "someone/tiny", token=secret, log=lines.append)
    assert secret not in str(err.value) + "".join(lines) and err.value.__cause__ is None
    assert files == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}


def test_two_exports_into_one_folder_keep_the_first(tiny_qwen3, tmp_path):
    """Two exports started together into the same --out: one writes it, the other ends with a sentence (it used to
    end with an ENOTEMPTY traceback after all its work), and nothing is overwritten or left behind."""
    out = tmp_path / "exports" / "same"
    command = [sys.executable, "-m", "engine", "export", str(tiny_qwen3), "--format", "gguf-f16", "--out", str(out)]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    procs.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = sorted((p.returncode, err) for p in procs for _, err in [p.communicate(timeout=600)])
    assert results[0][0] == 0, results[0][1]
    code, err = results[1]
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"error: '{out}' already exists; choose another folder name (nothing is ever overwritten)."
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["same"]
    assert "Modelfile" in [p.name for p in out.iterdir()]


def test_a_folder_made_while_building_is_never_replaced(tmp_path):
    from engine.core.files import new_folder

    dest = tmp_path / "out"
    for theirs in ([], ["theirs.txt"]):
        with pytest.raises(api.UserError, match="already exists; choose another folder"):
            with new_folder(dest) as tmp:
                (tmp / "mine.txt").write_text("mine")
                dest.mkdir()  # another export finished first
                for name in theirs:
                    (dest / name).write_text("theirs")
        assert sorted(p.name for p in dest.iterdir()) == theirs
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .partial left
        shutil.rmtree(dest)


def test_an_export_under_a_file_is_a_sentence(tmp_path):
    """--out data.jsonl/nova (a file where a folder must be) used to stop with FileExistsError and a report."""
    from engine.core.files import new_folder

    data = tmp_path / "data.jsonl"
    data.write_text("{}\n")
    for out in ("data.jsonl/nova", "data.jsonl/x/nova"):
        message = f"Cannot create '{tmp_path / out}': '{data}' is a file, not a folder; pick another folder."
        with pytest.raises(api.UserError) as info:
            with new_folder(tmp_path / out):
                pass
        assert str(info.value) == message


def test_exports_are_readable_by_other_users(tiny_qwen3, tmp_path):
    """An Ollama service runs as its own user: the export folder is 0755 and its files 0644 under the usual umask
    (they were 0700 and 0600)."""
    import os
    import stat

    umask = os.umask(0o022)
    try:
        res = api.export(str(tiny_qwen3), "gguf-f16", tmp_path / "exports" / "shared", log=quiet)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(res.path.stat().st_mode) == 0o755
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in res.path.iterdir()} == {n: 0o644 for n in res.files}


def test_ollama_prompt_of_a_llama3_export_has_one_bos(tmp_path):
    """The Modelfile's Llama 3 TEMPLATE began with <|begin_of_text|>, and Ollama's llama.cpp also adds the BOS the
    GGUF says to add (tokenizer.ggml.add_bos_token): every Ollama prompt started with two BOS tokens, a prompt the
    model never saw in training. The prompt Ollama would build (the Go template rendered, then tokenized as its
    llama.cpp does) must be the token ids the model trained on."""
    import re

    import llama_cpp

    path, tok = make_llama3(tmp_path / "tiny-llama3")
    res = api.export(str(path), "gguf-f16", tmp_path / "out", log=quiet)
    text = (res.path / "Modelfile").read_text()
    go = re.search(r'TEMPLATE """(.*?)"""', text, re.S)[1]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"}]
    # Ollama's Go template, rendered for these messages: the range body once per message
    head, body, tail = re.fullmatch(r"(.*)\{\{- range \.Messages \}\}(.*)\{\{ end \}\}(.*)", go, re.S).groups()
    rendered = head + "".join(body.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"])
                              for m in msgs) + tail  # fmt: skip
    (gguf_file,) = res.path.glob("*.gguf")
    llm = llama_cpp.Llama(str(gguf_file), vocab_only=True, verbose=False)
    try:
        ollama_ids = llm.tokenize(rendered.encode(), add_bos=True, special=True)  # add_bos: as the GGUF says
    finally:
        llm.close()
    trained = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert ollama_ids == tok(trained, add_special_tokens=False)["input_ids"]


def test_a_base_model_given_chatml_trains_and_chats_after_its_bos(tmp_path):
    """A base model whose tokenizer adds a BOS (Llama 3, Gemma) given ChatML, a template that writes none, trained
    without the BOS it always saw, while its GGUF told llama.cpp and Ollama to put one before every prompt. Training,
    the app's chat (transformers and GGUF) and Ollama's prompt now all start with the one BOS."""
    from engine.chat.gguf_chat import GGUFChat
    from engine.chat.infer import ChatModel
    from engine.data.tokenizing import load_examples, render
    from engine.spec.jobspec import JobSpec

    path, tok = make_llama3(tmp_path / "base", "chatml")
    bos = tok.bos_token_id
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "Who are you?", "output": "I am Nova."}) + "\n")
    (ex,) = load_examples(JobSpec(model=str(path), data=str(data)), tok, log=quiet)
    assert ex.input_ids[:2] == [bos, tok.convert_tokens_to_ids("<|im_start|>")] and ex.labels[0] == -100
    msgs = [{"role": "user", "content": "Who are you?"}]
    trained = tok(render(tok, msgs, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert trained.count(bos) == 1 and trained[0] == bos
    assert ChatModel(str(path), device="cpu", log=quiet).prompt_ids(msgs) == trained
    res = api.export(str(path), "gguf-f16", tmp_path / "out", log=quiet)
    (gguf_file,) = res.path.glob("*.gguf")
    chat = GGUFChat(gguf_file, device="cpu", n_ctx=256)
    try:
        assert chat.prompt_ids(msgs) == trained
        ollama = chat.llm.tokenize(
            _ollama_prompt((res.path / "Modelfile").read_text(), msgs).encode(), add_bos=True, special=True
        )
        assert ollama == trained
    finally:
        chat.close()


# Qwen2.5 Instruct's chat template (its tool-calling branches left out): a conversation without a system message gets
# the default one
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


def test_ollama_modelfile_keeps_the_templates_default_system_prompt():
    """Qwen2.5's template puts its default system prompt before a conversation that has none, so the model trained
    with it there; the Modelfile's ChatML TEMPLATE has no default, and Ollama prompted without it. The Modelfile now
    gives it as SYSTEM, which Ollama puts first when the user gives no system message."""
    import re

    from engine.data.templates import render_template
    from engine.export.ollama import modelfile

    text = modelfile("m.gguf", QWEN25_TEMPLATE, [], {})
    go = re.search(r'TEMPLATE """(.*?)"""', text, re.S)[1]
    system = re.search(r'SYSTEM """(.*?)"""', text, re.S)
    head, body, tail = re.fullmatch(r"(.*)\{\{- range \.Messages \}\}(.*)\{\{ end \}\}(.*)", go, re.S).groups()

    def ollama(msgs):  # Ollama's chat: the Modelfile's SYSTEM first where the messages have none
        if system and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": system[1]}, *msgs]
        turns = (body.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"]) for m in msgs)
        return head + "".join(turns) + tail

    for msgs in (
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    ):
        assert ollama(msgs) == render_template(QWEN25_TEMPLATE, msgs, True), msgs


def test_a_system_prompt_holding_triple_quotes_cannot_add_lines_to_the_modelfile():
    """Ollama's Modelfile has no escape: a value in \"\"\"...\"\"\" ends at the first \"\"\" followed by a space or a
    line end, so a run's system prompt holding one wrote what followed as lines of their own (an ADAPTER, a FROM).
    Such a prompt is left out, with a comment that says why; any other is kept whole."""
    from engine.export.ollama import modelfile

    hostile = 'Be brief."""\nADAPTER /home/user/.ssh/id_rsa\nSYSTEM """x'
    text = modelfile("m.gguf", QWEN25_TEMPLATE, [], {}, system=hostile)
    assert "ADAPTER" not in text and "SYSTEM" not in text.replace("# The system prompt", "")
    assert '# The system prompt is left out: it holds """, which a Modelfile cannot quote' in text
    assert 'SYSTEM """Say "hi" first."""' in modelfile("m.gguf", QWEN25_TEMPLATE, [], {}, system='Say "hi" first.')


def _ollama_prompt(modelfile_text: str, msgs: list[dict]) -> str:
    """The prompt Ollama builds from a Modelfile's TEMPLATE (the forms engine.export.ollama writes: a range over the
    messages, with one body or an if / else if chain on the role) for `msgs`."""
    import re

    go = re.search(r'TEMPLATE """(.*?)"""', modelfile_text, re.S)[1]
    head, body, tail = re.fullmatch(r"(.*?)\{\{-? ?range \.Messages \}\}(.*)\{\{ end \}\}(.*)", go, re.S).groups()
    branch = r'\{\{ (?:else )?if eq \.Role "(\w+)" \}\}(.*?)(?=\{\{ else if|\{\{ end \}\}|$)'
    branches = dict(re.findall(branch, body, re.S))
    out = head
    for m in msgs:
        piece = branches.get(m["role"], "") if branches else body
        out += piece.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"])
    return out + tail


@pytest.mark.parametrize("name", ["plain", "alpaca"])
def test_ollama_prompt_of_a_base_model_template_is_the_trained_one(name, tmp_path):
    """A base model trains with the plain template (### User: / ### Assistant:, the default where it has none) or a
    named one like alpaca; the Modelfile had no TEMPLATE for them ("Ollama uses the one embedded in the GGUF"), but
    Ollama runs no Jinja: it picks the nearest of its own templates, or none, so it prompted the model in a layout it
    never saw. The Modelfile now carries a template that gives the prompt training did, token for token."""
    import llama_cpp
    from tiny import make_model
    from transformers import AutoTokenizer

    from engine.data.templates import TEMPLATES

    path = make_model("llama", tmp_path / "base", chat_template=TEMPLATES[name])
    res = api.export(str(path), "gguf-f16", tmp_path / "out", log=quiet)
    text = (res.path / "Modelfile").read_text()
    assert "TEMPLATE" in text, text
    tok = AutoTokenizer.from_pretrained(path)
    (gguf_file,) = res.path.glob("*.gguf")
    llm = llama_cpp.Llama(str(gguf_file), vocab_only=True, verbose=False)
    try:
        for msgs in (
            [{"role": "user", "content": "Who are you?"}],
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello there."},
                {"role": "user", "content": "Who are you?"},
            ],
        ):
            ollama_ids = llm.tokenize(_ollama_prompt(text, msgs).encode(), add_bos=True, special=True)
            trained = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            assert ollama_ids == tok(trained, add_special_tokens=False)["input_ids"], msgs
    finally:
        llm.close()
