"""The notebook API (tunesmith/): Unsloth's calls on the engine, each option honoured or refused with a sentence.

The example (examples/identity_qwen3.py) runs end to end on a tiny Qwen3 in a subprocess: 4-bit load, LoRA, TRL's
SFTTrainer with loss on the replies only, the fast decoder, and merged / GGUF exports that plain transformers and
llama.cpp load and that answer with the trained identity.
"""

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import IDENTITY_ANSWER, IDENTITY_QUESTIONS, ROOT

from engine import api
from engine.data import templates
from engine.data.identity import identity_rows
from engine.spec.jobspec import ALL_LINEAR
from engine.training.trl_loss import OPTIONAL_OUTPUTS, chunked_logprob
from tunesmith import (
    FastLanguageModel,
    UserError,
    get_chat_template,
    is_bfloat16_supported,
    standardize_sharegpt,
    train_on_responses_only,
)
from tunesmith.chat_templates import TEMPLATE_ALIASES, response_mask
from tunesmith.save import GGUF_METHODS

EXAMPLE_ROWS = 4  # identity examples the CI run trains on: TRL's loss kernel runs in Triton's interpreter on the CPU


def quiet(_msg):
    pass


def greedy_reply(model, tok, question: str) -> str:
    """Plain transformers: render the question with the saved chat template and decode greedily."""
    ids = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"].to(model.device)
    out = model.generate(
        ids, max_new_tokens=40, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_identity_example_end_to_end(tiny_qwen3, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "outputs"
    script = ROOT / "examples" / "identity_qwen3.py"
    args = ["--model", str(tiny_qwen3), "--out", str(out), "--rows", str(EXAMPLE_ROWS), "--grad-accum", "1"]
    args += ["--max-steps", "30", "--learning-rate", "2e-2"]
    res = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "Who are you? ->" in res.stdout
    assert "decode: eager" in res.stdout  # for_inference's generate ran on the engine's decoder
    assert sorted(p.name for p in out.iterdir()) == ["Nova-16bit", "Nova-gguf", "checkpoints"]  # no hidden leftovers

    trained = identity_rows("Nova", "Tunesmith Labs")[:EXAMPLE_ROWS]
    merged = AutoModelForCausalLM.from_pretrained(out / "Nova-16bit", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out / "Nova-16bit")
    assert json.loads((out / "Nova-16bit" / "config.json").read_text())["dtype"] == "bfloat16"
    for row in trained:
        assert greedy_reply(merged, tok, row["instruction"]) == row["output"]

    (gguf_file,) = (out / "Nova-gguf").glob("*.gguf")
    assert gguf_file.name == "Nova-gguf-q4_k_m.gguf" and (out / "Nova-gguf" / "Modelfile").is_file()
    chat = api.Chat(str(gguf_file), device="cpu")  # llama.cpp, with the chat template embedded in the file
    try:
        for row in trained:
            assert chat.reply([{"role": "user", "content": row["instruction"]}]) == row["output"]
    finally:
        chat.close()


# ---------------------------------------------------------------------------------------------------------- loading


def test_from_pretrained_4bit_by_default_with_max_seq_length(tiny_qwen3):
    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=256, dtype=None)
    assert model.is_loaded_in_4bit and model.tunesmith_spec.method == "qlora"
    assert model.max_seq_length == 256 and tok.model_max_length == 256
    assert tok(["word " * 400], truncation=True)["input_ids"][0].__len__() == 256
    assert model.dtype == torch.float32  # dtype=None on the CPU: fp32
    assert tok.chat_template == templates.TEMPLATES["chatml"]  # the tokenizer's own, kept
    assert not is_bfloat16_supported()  # no GPU here


def test_from_pretrained_16bit_dtype_device_and_noop_options(tiny_llama):
    model, _ = FastLanguageModel.from_pretrained(
        str(tiny_llama),
        max_seq_length=128,
        dtype=torch.bfloat16,
        load_in_4bit=False,
        device_map="cpu",
        load_in_8bit=False,
        fast_inference=False,
        token=None,
        fix_tokenizer=True,
        rope_scaling=None,
    )
    assert not getattr(model, "is_loaded_in_4bit", False) and model.tunesmith_spec.method == "lora"
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"


@pytest.mark.parametrize("device_map", [None, "auto", "cpu", {"": "cpu"}, {"": 0}, {"": "cuda:0"}, "cuda", "cuda:0", 0])
def test_from_pretrained_takes_the_common_device_maps(tiny_llama, device_map, capsys):
    model, _ = FastLanguageModel.from_pretrained(
        str(tiny_llama), max_seq_length=128, load_in_4bit=False, device_map=device_map
    )
    assert model.device.type == "cpu"  # no GPU here: a GPU map falls back to the CPU, and says so
    gpu_map = device_map not in (None, "auto", "cpu", {"": "cpu"})
    assert ("asks for a GPU but PyTorch sees none; loading on the CPU" in capsys.readouterr().out) == gpu_map


def test_full_finetuning_trains_every_weight_and_saves_merged(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = FastLanguageModel.from_pretrained(str(tiny_llama), max_seq_length=128, full_finetuning=True)
    assert model.tunesmith_spec.method == "full" and not getattr(model, "is_loaded_in_4bit", False)
    assert all(p.requires_grad for p in model.parameters()) and model.is_gradient_checkpointing
    with torch.no_grad():
        model.lm_head.weight.mul_(2)  # stands in for training: the saved model must carry the change
    res = model.save_pretrained_merged(tmp_path / "full", tok, save_method="merged_16bit")
    assert res.format == "merged16"
    saved = AutoModelForCausalLM.from_pretrained(res.path, dtype=torch.float32)
    torch.testing.assert_close(saved.lm_head.weight, model.lm_head.weight.to(torch.bfloat16).float())
    with pytest.raises(UserError, match="full fine-tuning"):
        FastLanguageModel.get_peft_model(model)
    with pytest.raises(UserError, match="Pass the tokenizer"):
        model.save_pretrained_merged(tmp_path / "no-tok")

    model, _ = FastLanguageModel.from_pretrained(
        str(tiny_llama), max_seq_length=128, full_finetuning=True, use_gradient_checkpointing=False
    )
    assert not model.is_gradient_checkpointing


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(load_in_8bit=True), "load_in_8bit=True is not supported; 8-bit weights.*load_in_4bit=True"),
        (dict(token="hf_abc"), "HF_TOKEN"),
        (dict(rope_scaling={"type": "linear", "factor": 2.0}), "RoPE is not stretched"),
        (dict(offload_folder="./offload"), "never offloaded to disk.*streams its layers from RAM"),
        (dict(offload_enabled=True), "no library has offload_enabled; drop it"),
        (dict(offload_enabled=False), "no library has offload_enabled; drop it"),
        (dict(load_in_3bit=True), "no library trains 3-bit weights; write load_in_4bit=True"),
        (dict(model_name_or_path="Qwen/Qwen3-4B"), "write model_name="),
        (dict(revision="main"), "revision"),
        (dict(fast_inference="vllm"), "fast_inference='vllm' is not supported; use True or False"),
        (dict(load_in_4bit=True, full_finetuning=True), "full fine-tuning trains 16-bit weights"),
        (dict(full_finetuning=True, dtype=torch.float16), "Full fine-tuning cannot train fp16 weights.*LoRA"),
        (dict(full_finetuning=True, use_gradient_checkpointing="sometimes"), 'use "unsloth", True or False'),
        (dict(device_map="balanced"), "device_map='balanced' is not supported; the model goes on one device"),
        (dict(device_map={"model": 0, "lm_head": "cpu"}), "the model goes on one device"),
        (dict(device_map="cuda:1"), "device_map='cuda:1' is not supported"),
        (dict(dtype="int8"), "dtype='int8' is not supported"),
        (dict(max_seq_length=513), "longer than this model's context \\(512 tokens\\).*max_seq_length=512"),
    ],
)
def test_from_pretrained_refuses_what_it_cannot_honour(tiny_qwen3, kwargs, message):
    with pytest.raises(UserError, match=message):
        FastLanguageModel.from_pretrained(str(tiny_qwen3), **{"max_seq_length": 256, **kwargs})


def test_other_stored_quantizations_are_refused(tiny_qwen3, tmp_path):
    """bitsandbytes 4-bit checkpoints load for QLoRA (tests/test_prequantized.py); other quantizations are refused."""
    folder = tmp_path / "qwen3-gptq"
    shutil.copytree(tiny_qwen3, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(UserError, match="stored quantized \\(gptq\\).*load its 16-bit original"):
        FastLanguageModel.from_pretrained(str(folder), max_seq_length=256)


# ------------------------------------------------------------------------------------------------------------- LoRA


def test_adapter_folder_loads_its_base_and_the_adapter(tiny_qwen3, tmp_path, monkeypatch):
    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"])
    with torch.no_grad():  # stands in for training: PEFT starts B at 0, which would make any adapter look right
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    monkeypatch.chdir(tmp_path)
    model.save_pretrained("my_finetuned_model")  # as Unsloth notebooks save it
    tok.save_pretrained("my_finetuned_model")
    cfg = json.loads((tmp_path / "my_finetuned_model" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_qwen3.resolve())  # a local base: its folder

    again, tok2 = FastLanguageModel.from_pretrained("./my_finetuned_model", max_seq_length=128, load_in_4bit=False)
    assert again.peft_config["default"].r == 8 and again.max_seq_length == 128 and tok2.model_max_length == 128
    trainable = sorted(n for n, p in again.named_parameters() if p.requires_grad)
    assert trainable == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    ids = tok(["Who are you? I am Nova."], return_tensors="pt")["input_ids"]
    model.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)

    shutil.copytree(tmp_path / "my_finetuned_model", tmp_path / "orphan")
    gone = tmp_path / "deleted-base"
    (tmp_path / "orphan" / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(gone)}))
    with pytest.raises(UserError, match=f"LoRA adapter of '{gone}', which is neither a folder"):
        FastLanguageModel.from_pretrained("orphan", max_seq_length=128)


def test_saved_adapters_name_the_hub_id(tiny_qwen3, tmp_path):
    from engine.core.hardware import choose_placement
    from engine.models.loading import add_lora, load_model, name_after_source
    from engine.spec.jobspec import JobSpec
    from engine.training.steps import save_trainable

    model = load_model(tiny_qwen3, choose_placement("cpu"))  # what resolve_model gives for a hub id: a folder
    name_after_source(model, "Qwen/Qwen3-0.6B")
    save_trainable(add_lora(model, JobSpec(model="Qwen/Qwen3-0.6B", data="-"), quiet), tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "Qwen/Qwen3-0.6B"


def test_get_peft_model_options(tiny_qwen3):
    model, _ = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=256)
    model = FastLanguageModel.get_peft_model(
        model,
        r=8,
        target_modules=["q_proj", "v_proj", "no_such_proj"],
        lora_alpha=32,
        lora_dropout=0.1,
        use_gradient_checkpointing=False,
        random_state=7,
        use_rslora=True,
        max_seq_length=256,
        bias="none",
        loftq_config={},
    )
    cfg = model.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.use_rslora) == (8, 32, 0.1, True)
    assert set(cfg.target_modules) == {"q_proj", "v_proj"}  # names the model lacks are skipped
    assert not model.is_gradient_checkpointing and model.max_seq_length == 256
    assert callable(model.save_pretrained_merged) and callable(model.save_pretrained_gguf)
    with pytest.raises(UserError, match="already has LoRA adapters"):
        FastLanguageModel.get_peft_model(model)

    def first_lora_a(seed, **kw):
        m, _ = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=256)
        m = FastLanguageModel.get_peft_model(m, random_state=seed, **kw)
        return m, next(p for n, p in m.named_parameters() if "lora_A" in n).detach().clone()

    m, a = first_lora_a(3407, target_modules="all-linear", use_gradient_checkpointing="unsloth")
    assert len(m.peft_config["default"].target_modules) == 7 and m.is_gradient_checkpointing
    assert torch.equal(a, first_lora_a(3407)[1]) and not torch.equal(a, first_lora_a(1)[1])


def test_fast_model_picks_layers_by_the_finetune_switches(tiny_qwen3):
    """Gemma 3 notebooks load with FastModel and choose adapters with finetune_*_layers / _modules switches."""
    from datasets import Dataset

    from tunesmith import FastModel, standardize_data_formats

    def targets(**switches):
        model, _ = FastModel.from_pretrained(
            model_name=str(tiny_qwen3), max_seq_length=128, load_in_4bit=True, load_in_8bit=False, full_finetuning=False
        )
        model = FastModel.get_peft_model(
            model, r=8, lora_alpha=8, lora_dropout=0, bias="none", random_state=3407, **switches
        )
        return set(model.peft_config["default"].target_modules)

    notebook = dict(finetune_vision_layers=False, finetune_language_layers=True)
    assert targets(**notebook, finetune_attention_modules=True, finetune_mlp_modules=True) == set(ALL_LINEAR)
    assert targets(finetune_mlp_modules=False) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert targets(finetune_attention_modules=False, target_modules=["q_proj", "up_proj"]) == {"up_proj"}
    with pytest.raises(UserError, match="finetune_language_layers=False leaves nothing to train"):
        targets(finetune_language_layers=False)
    with pytest.raises(UserError, match="leave no layer to train"):
        targets(finetune_attention_modules=False, finetune_mlp_modules=False)

    rows = Dataset.from_list([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}])
    assert standardize_data_formats(rows)[0] == standardize_sharegpt(rows)[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(bias="all"), "bias terms are not trained"),
        (dict(loftq_config={"loftq_bits": 4}), "LoftQ"),
        (dict(modules_to_save=["norm"]), "full_finetuning=True"),
        (dict(modules_to_save=["lm_head"]), "lm_head alone cannot be trained.*list both"),
        (dict(layers_to_transform=[0]), "every layer"),
        (dict(init_lora_weights="gaussian"), "init_lora_weights"),
        (dict(use_dora=True), "DoRA"),
        (dict(qat_scheme="int4"), "quantization-aware"),
        (dict(temporary_location="/tmp/x"), "no 'temporary_location' argument"),
        (dict(use_gradient_checkpointing="yes"), 'use "unsloth", True or False'),
        (dict(max_seq_length=1024), "set max_seq_length in FastLanguageModel.from_pretrained \\(it is 256\\)"),
        (dict(target_modules="q_proj"), "list of layer names"),
    ],
)
def test_get_peft_model_refuses_what_it_cannot_honour(tiny_qwen3, kwargs, message):
    model, _ = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=256)
    with pytest.raises(UserError, match=message):
        FastLanguageModel.get_peft_model(model, **kwargs)


def test_get_peft_model_needs_a_tunesmith_model(tiny_qwen3):
    from transformers import AutoModelForCausalLM

    with pytest.raises(UserError, match="FastLanguageModel.from_pretrained"):
        FastLanguageModel.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen3))


# -------------------------------------------------------------------------------------------------------- inference


def test_for_inference_generate_matches_transformers_and_falls_back(tiny_llama):
    from transformers import TextIteratorStreamer

    model, tok = FastLanguageModel.from_pretrained(str(tiny_llama), max_seq_length=256)
    model = FastLanguageModel.get_peft_model(model)
    assert FastLanguageModel.for_inference(model) is model and not model.training
    fast, plain = model.generate, model.generate.transformers_generate
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    ids, n = inputs["input_ids"], inputs["input_ids"].shape[1]

    prompts = ["Who are you?", "Tell me about yourself. What can you do?"]
    batch = tok(prompts, return_tensors="pt", padding=True).to(model.device)
    assert torch.equal(fast(**batch, max_new_tokens=5, do_sample=False), plain(**batch, max_new_tokens=5))
    assert fast.decoder is None  # a padded batch went to transformers' generate
    assert fast(ids, max_new_tokens=4, num_beams=2).shape[1] == n + 4 and fast.decoder is None

    expected = plain(**inputs, max_new_tokens=12, do_sample=False)
    assert torch.equal(model.generate(**inputs, max_new_tokens=12, use_cache=True), expected)
    assert fast.decoder is not None  # the engine's decoder served it
    new = expected[0, n:].tolist()
    stop = next(t for i, t in enumerate(new) if t not in new[:i] and i >= 2)
    stopped = model.generate(ids, max_new_tokens=12, eos_token_id=stop)
    assert stopped[0, n:].tolist() == new[: new.index(stop) + 1]  # as transformers: the stop token is included

    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    out = model.generate(ids, max_new_tokens=6, streamer=streamer, eos_token_id=[])
    assert "".join(streamer) == tok.decode(out[0, n:]) and out.shape[1] == n + 6

    torch.manual_seed(0)
    sampled = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.9, top_k=20, min_p=0.05)
    torch.manual_seed(0)
    again = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.9, top_k=20, min_p=0.05)
    assert torch.equal(sampled, again)
    penalised = model.generate(ids, max_new_tokens=8, do_sample=False, repetition_penalty=1.3)
    assert torch.equal(penalised, plain(ids, max_new_tokens=8, do_sample=False, repetition_penalty=1.3))

    assert FastLanguageModel.for_training(model) is model and model.training
    assert "generate" not in model.__dict__ and fast.decoder is None


def test_generate_takes_apply_chat_template_output_as_the_prompt(tiny_llama):
    """Notebooks pass `tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")` to
    generate as `input_ids`, by position or by name; in transformers 5 that is a BatchEncoding, not a tensor."""
    from transformers import TextIteratorStreamer

    model, tok = FastLanguageModel.from_pretrained(str(tiny_llama), max_seq_length=256, load_in_4bit=False)
    model = FastLanguageModel.for_inference(FastLanguageModel.get_peft_model(model))
    messages = [{"role": "user", "content": "Who are you?"}]
    enc = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_tensors="pt")
    expected = model.generate.transformers_generate(**enc, max_new_tokens=6, do_sample=False)
    assert torch.equal(model.generate(enc, max_new_tokens=6, use_cache=True), expected)
    assert torch.equal(model.generate(input_ids=enc, max_new_tokens=6, pad_token_id=tok.eos_token_id), expected)
    assert model.generate.decoder is not None  # served by the engine's decoder, not handed on
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    out = model.generate(enc, streamer=streamer, max_new_tokens=6)
    assert "".join(streamer) == tok.decode(out[0, enc["input_ids"].shape[1] :])
    assert model.generate(enc, max_new_tokens=3, num_beams=2).shape[1] == enc["input_ids"].shape[1] + 3


# ----------------------------------------------------------------------------------------------------- chat helpers


@pytest.mark.parametrize("name", sorted(TEMPLATE_ALIASES))
def test_get_chat_template_names(tiny_qwen3, name):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    own = tok.chat_template
    assert get_chat_template(tok, chat_template=name) is tok
    target = TEMPLATE_ALIASES[name]
    assert tok.chat_template == (own if target == "auto" else templates.TEMPLATES[target])


def test_gemma_3_template_takes_content_as_a_list_of_parts(tiny_qwen3):
    """Gemma 3 notebooks write a message's content as [{"type": "text", "text": ...}]; it renders as the text."""
    from transformers import AutoTokenizer

    tok = get_chat_template(AutoTokenizer.from_pretrained(tiny_qwen3), chat_template="gemma-3")

    def parts(text):
        return [{"type": "text", "text": text}]

    plain = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": IDENTITY_ANSWER},
    ]
    listed = [{**m, "content": parts(m["content"])} for m in plain]
    text = tok.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(listed, tokenize=False, add_generation_prompt=True) == text
    assert "<start_of_turn>user\nBe brief.\n\nWho are you?<end_of_turn>" in text and "'type'" not in text


def test_get_chat_template_refusals(tiny_qwen3):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    with pytest.raises(UserError, match="Unknown chat template 'vicuna'; Tunesmith supports chatml, qwen-2.5"):
        get_chat_template(tok, chat_template="vicuna")
    with pytest.raises(UserError, match="mapping should name the keys and roles of your rows"):
        get_chat_template(tok, chat_template="llama-3.1", mapping={"role": "from", "content": "value"})
    with pytest.raises(UserError, match="map_eos_token=False"):
        get_chat_template(tok, chat_template="chatml", map_eos_token=False)
    get_chat_template(
        tok, "chatml", mapping={"role": "role", "content": "content", "user": "user", "assistant": "assistant"}
    )


@pytest.mark.parametrize("name", ["chatml", "llama-3.1", "mistral", "gemma-3", "auto"])
def test_get_chat_template_with_a_sharegpt_mapping(tiny_llama, name):
    """Mistral / Llama 3 conversational notebooks keep ShareGPT rows and pass mapping= (and write their prompts as
    {"from": "human", "value": ...}); the template reads both those and role/content messages the same way."""
    from transformers import AutoTokenizer

    sharegpt = {"role": "from", "content": "value", "user": "human", "assistant": "gpt"}
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok = get_chat_template(tok, chat_template=name, mapping=sharegpt, map_eos_token=True)
    again = get_chat_template(tok, chat_template=name, mapping=sharegpt).chat_template  # notebooks call it twice
    assert again == tok.chat_template and again.count("namespace(messages=[])") == 1
    turns = [("user", "human", "Who are you?"), ("assistant", "gpt", IDENTITY_ANSWER), ("user", "human", "Hi")]
    standard = [{"role": r, "content": c} for r, _, c in turns]
    rows = [{"from": f, "value": c} for _, f, c in turns]
    text = tok.apply_chat_template(standard, tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(rows, tokenize=False, add_generation_prompt=True) == text
    assert "Who are you?" in text and "human" not in text and "gpt" not in text
    plain = get_chat_template(AutoTokenizer.from_pretrained(tiny_llama), chat_template=name)
    assert plain.apply_chat_template(standard, tokenize=False, add_generation_prompt=True) == text

    model, _ = FastLanguageModel.from_pretrained(str(tiny_llama), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.for_inference(FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8))
    inputs = tok.apply_chat_template(rows[:1], tokenize=True, add_generation_prompt=True, return_tensors="pt")
    expected = tok.apply_chat_template(standard[:1], add_generation_prompt=True, return_tensors="pt")["input_ids"]
    assert torch.equal(inputs["input_ids"], expected)
    assert model.generate(input_ids=inputs, max_new_tokens=3, use_cache=True).shape[1] == expected.shape[1] + 3


def test_standardize_sharegpt():
    from datasets import Dataset

    ds = Dataset.from_list(
        [
            {
                "conversations": [
                    {"from": "system", "value": "Be brief."},
                    {"from": "human", "value": "Who are you?"},
                    {"from": "gpt", "value": IDENTITY_ANSWER},
                ],
                "id": 1,
            },
        ]
    )
    out = standardize_sharegpt(ds)
    assert out[0]["conversations"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": IDENTITY_ANSWER},
    ]
    assert out[0]["id"] == 1
    assert standardize_sharegpt(out)[0]["conversations"] == out[0]["conversations"]  # role/content rows are kept
    bad = Dataset.from_list([{"conversations": [{"from": "robot", "value": "beep"}]}])
    with pytest.raises(UserError, match="row 1: turn 1 has unknown role 'robot'"):
        standardize_sharegpt(bad)
    with pytest.raises(UserError, match="no 'conversations' column"):
        standardize_sharegpt(Dataset.from_list([{"messages": []}]))


def test_response_mask():
    # 1 2 = instruction marker, 3 = response marker; 9 starts a second packed sequence
    ids = [7, 1, 2, 5, 3, 6, 6, 1, 2, 5, 3, 8, 9, 3, 4]
    keep = response_mask(ids, [1, 2], [3], starts=[12])
    assert [t for t, k in zip(ids, keep, strict=True) if k] == [6, 6, 8, 4]
    assert response_mask([3, 6, 9, 6], [1, 2], [3], starts=[2]) == [False, True, False, False]


def test_train_on_responses_only_with_sft_trainer(tiny_qwen3, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=256)
    model = FastLanguageModel.get_peft_model(model)
    tok = get_chat_template(tok, chat_template="qwen-2.5")
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": IDENTITY_ANSWER},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Two plus two is four."},
    ]
    text = tok.apply_chat_template(conversation, tokenize=False)
    ds = Dataset.from_list([{"text": text}, {"text": text}])
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none", max_length=256)
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=ds, args=args)
    assert train_on_responses_only(trainer, "<|im_start|>user\n", "<|im_start|>assistant\n") is trainer
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    labels = batch["labels"][0].tolist()
    runs, run = [], []
    for token, label in zip(batch["input_ids"][0].tolist(), labels, strict=True):
        if label != -100:
            assert label == token
            run.append(token)
        elif run:
            runs.append(tok.decode(run))
            run = []
    runs += [tok.decode(run)] if run else []
    # each reply with its end-of-turn (TRL appends one more EOS after the text), nothing of the prompts
    assert runs == [f"{IDENTITY_ANSWER}<|im_end|>\n", "Two plus two is four.<|im_end|>\n<|im_end|>"]
    # the dataset's labels (TRL builds the column) are masked too: the notebooks print them to check the masking
    assert trainer.train_dataset[0]["labels"] == labels

    args = SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none", max_length=256, packing=True)
    packed = SFTTrainer(model=model, processing_class=tok, train_dataset=ds, args=args)
    train_on_responses_only(packed, "<|im_start|>user\n", "<|im_start|>assistant\n")
    (row,) = packed.train_dataset
    assert row["seq_lengths"] == [len(labels)] * 2 and row["labels"] == labels * 2
    assert packed.data_collator([row])["labels"][0].tolist() == labels * 2

    with pytest.raises(UserError, match="no reply after '<\\|im_start\\|>bot\\\\n'"):
        train_on_responses_only(trainer, "<|im_start|>user\n", "<|im_start|>bot\n")


def identity_trainer(model, tok, folder, **config):
    """TRL's SFTTrainer on the identity questions of conftest, with the loss on the replies only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": IDENTITY_ANSWER}], tokenize=False
        )
        for q in IDENTITY_QUESTIONS
    ]
    args = SFTConfig(output_dir=str(folder), report_to="none", save_strategy="no", **config)
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_dict({"text": texts}), args=args)
    return train_on_responses_only(trainer, "<|im_start|>user\n", "<|im_start|>assistant\n")


@pytest.mark.parametrize("packed", [False, True], ids=["cpu", "gpu_packing"])
def test_fp16_model_keeps_its_adapters_fp32(tiny_qwen3, tmp_path, monkeypatch, packed):
    """TRL casts a 4-bit model's adapters to bf16, which fp16 mixed precision cannot unscale: they go back to fp32.
    gpu_packing: as prepare_for_training does on a GPU (the CPU skips both), the base patched before PEFT and the
    adapters packed after it: after the casts the fused ops and PEFT's weights read the fp32 tensor the optimizer
    steps (before, TRL's cast left them on the first memory, and a T4 run's loss never moved)."""
    from engine.models import loading
    from engine.patching import patch_model
    from engine.patching.modules import pack_adapters

    add_lora = loading.add_lora

    def add_packed_lora(model, spec, log):
        patch_model(model, log=quiet)
        model = add_lora(model, spec, log)
        assert pack_adapters(model, log=quiet) == 4 * model.config.num_hidden_layers
        return model

    if packed:
        monkeypatch.setattr(loading, "add_lora", add_packed_lora)
    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=256, dtype=torch.float16)
    model = FastLanguageModel.get_peft_model(model, use_gradient_checkpointing=False)
    trainer = identity_trainer(model, tok, tmp_path, bf16=False, gradient_checkpointing=False)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}  # TRL's cast
    model.train()
    batch = trainer.data_collator([trainer.train_dataset[0]])
    model(**{k: v.to(model.device) for k, v in batch.items()})
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    if packed:
        flat = model.get_parameter("packed_adapters")
        for packing in {id(m.packing): m.packing for m in model.modules() if getattr(m, "packing", None)}.values():
            for leaf, start in packing.pieces:
                assert leaf.dtype == torch.float32 and leaf.data_ptr() == flat.data_ptr() + start * 4
        for name, p in model.named_parameters():
            if "lora_" in name:
                assert p.dtype == torch.float32 and p.data_ptr() == flat.data_ptr() + p.packed_in[1] * 4, name


def gpu_identity_run(model_dir, folder, dtype, **config):
    """QLoRA on the GPU through the notebook API (fast path, packed adapters, TRL's casts), 60 steps on the identity
    questions, then for_inference: (the reply to "Who are you?", a message with what a failure needs, since GPU
    runs are rare: the reply, the loss and gradient norm of every step, the trainable tensors)."""
    model, tok = FastLanguageModel.from_pretrained(str(model_dir), max_seq_length=256, dtype=dtype)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32)
    config.update(per_device_train_batch_size=6, max_steps=60, learning_rate=1e-2, lr_scheduler_type="constant")
    trainer = identity_trainer(model, tok, folder, logging_steps=1, disable_tqdm=True, **config)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    FastLanguageModel.for_inference(model)
    reply = greedy_reply(model, tok, "Who are you?")
    trainable = [(n, p.dtype, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    message = (
        f"reply {reply!r}; losses {[round(h['loss'], 4) for h in logs]}; "
        f"grad norms {[round(float(h.get('grad_norm', 'nan')), 3) for h in logs]}; trainable {trainable}"
    )
    return reply, [h["loss"] for h in logs], message


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_t4_setting_trains_and_answers(tiny_qwen3, tmp_path):
    """The Kaggle T4 guide's setting: 4-bit weights, fp16 compute and SFTConfig(fp16=True), 8-bit AdamW."""
    config = dict(fp16=True, bf16=False, optim="adamw_8bit")
    reply, losses, message = gpu_identity_run(tiny_qwen3, tmp_path, torch.float16, **config)
    assert losses[-1] < losses[0] / 10, message  # it learnt (a loss that never moves: the adapters were not stepped)
    assert reply == IDENTITY_ANSWER, message


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_qlora_trains_and_answers(tiny_qwen3, tmp_path):
    """The same on a bf16 GPU (the README's example): TRL casts the packed adapters to bf16, and they train so."""
    reply, losses, message = gpu_identity_run(tiny_qwen3, tmp_path, torch.bfloat16, bf16=True, fp16=False)
    assert losses[-1] < losses[0] / 10, message
    assert reply == IDENTITY_ANSWER, message


# ----------------------------------------------------------------------------------------------------------- saving


def test_save_lora_and_refusals(tiny_qwen3, tmp_path):
    from peft import PeftConfig

    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=256)
    with pytest.raises(UserError, match="Nothing trained to save"):
        model.save_pretrained_merged(tmp_path / "untrained", tok)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    res = model.save_pretrained_merged(tmp_path / "adapter", tok, save_method="lora")
    assert res.format == "lora" and {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(
        res.files
    )
    assert PeftConfig.from_pretrained(res.path).r == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # the hidden source folder is gone

    (tmp_path / "taken").mkdir()
    for call, kwargs, message in [
        (model.save_pretrained_merged, dict(save_method="merged_4bit"), "merged_4bit.*q4_k_m"),
        (model.save_pretrained_merged, dict(push_to_hub=True), "model.push_to_hub_merged"),
        (model.save_pretrained_merged, dict(token="hf_abc"), "pass it to push_to_hub_merged.*or set HF_TOKEN"),
        (model.save_pretrained_merged, dict(safe_serialization=False), "safetensors"),
        (model.save_pretrained_merged, dict(max_shard_size="1GB"), "no 'max_shard_size' argument"),
        (model.save_pretrained_gguf, dict(quantization_method="q2_k"), "q2_k.*f16, bf16, q8_0, q4_k_m"),
        (model.save_pretrained_gguf, dict(push_to_hub=True), "push_to_hub_gguf"),
    ]:
        with pytest.raises(UserError, match=message):
            call(tmp_path / "new", tok, **kwargs)
    with pytest.raises(UserError, match="already exists"):
        model.save_pretrained_gguf(tmp_path / "taken", tok, quantization_method="q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "taken"]


def test_save_pretrained_gguf_takes_quantization_type(tiny_qwen3, tmp_path):
    """Gemma 3 notebooks spell the GGUF type quantization_type="Q8_0" (and pass no tokenizer)."""
    model, _ = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    res = model.save_pretrained_gguf(tmp_path / "gemma-3-finetune", quantization_type="Q8_0")
    assert res.format == "gguf-q8_0" and "gemma-3-finetune-q8_0.gguf" in res.files
    with pytest.raises(UserError, match="quantization_method='f16' and quantization_type='Q8_0' are the same setting"):
        model.save_pretrained_gguf(tmp_path / "both", quantization_method="f16", quantization_type="Q8_0")
    with pytest.raises(UserError, match="quantization_method='q2_k' is not supported"):
        model.push_to_hub_gguf("someone/tiny-gguf", quantization_type="q2_k", token="hf_x")


def test_push_to_hub_token_from_argument_or_env_never_logged(tiny_qwen3, tmp_path, monkeypatch, capsys):
    """Offline (conftest sets HF_HUB_OFFLINE) the upload fails for real after the export: a clear sentence, the
    export kept for another push, and the token in no output, error or file. Without a token nothing is exported."""
    from huggingface_hub import constants

    secret = "hf_tunesmithNotebookToken0123456789abcXYZ"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path.parent / "no-token"))  # nor a stored login
    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    with pytest.raises(UserError, match="needs a write token: set HF_TOKEN"):
        model.push_to_hub_merged("someone/tiny-merged", tok)
    with pytest.raises(UserError, match="'not a repo' is not a hub repository name"):
        model.push_to_hub_gguf("not a repo", tok, token=secret)
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(UserError) as merged_err:
        model.push_to_hub_merged("someone/tiny-merged", tok, save_method="merged_16bit", token=secret, private=True)
    monkeypatch.setenv("HF_TOKEN", secret)
    with pytest.raises(UserError) as gguf_err:
        model.push_to_hub_gguf("someone/tiny-gguf", tok, quantization_method="f16")
    for err, name in ((merged_err, "tiny-merged"), (gguf_err, "tiny-gguf")):
        assert f"Uploading '{name}' to 'someone/{name}' failed" in str(err.value)
        assert f"The export is complete in '{tmp_path / name}'" in str(err.value) and err.value.__cause__ is None
    assert "model.safetensors" in os.listdir(tmp_path / "tiny-merged")
    assert any(f.endswith(".gguf") for f in os.listdir(tmp_path / "tiny-gguf"))
    out = capsys.readouterr()
    assert secret not in out.out + out.err + str(merged_err.value) + str(gguf_err.value)
    for p in tmp_path.rglob("*"):
        assert not p.is_file() or secret.encode() not in p.read_bytes(), p


def test_gguf_methods_are_engine_formats():
    assert set(GGUF_METHODS.values()) == {f for f in api.EXPORT_FORMATS if f.startswith("gguf-")}
    assert (GGUF_METHODS["not_quantized"], GGUF_METHODS["fast_quantized"], GGUF_METHODS["quantized"]) == (
        "gguf-f16",
        "gguf-q8_0",
        "gguf-q4_k_m",
    )


def test_dpo_and_grpo_trainers_take_the_notebook_model(tiny_qwen3, tmp_path):
    """TRL's DPOTrainer and GRPOTrainer train what from_pretrained / get_peft_model return, with the user's code
    unchanged: DPO's chosen-vs-rejected margin rises, GRPO runs its steps with a reward function."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer

    def notebook_model():
        model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=64, load_in_4bit=False)
        return FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16), tok

    def user(q):
        return [{"role": "user", "content": q}]

    common = dict(
        output_dir=str(tmp_path / "trainer"),
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
    )
    pairs = Dataset.from_list(
        [
            dict(
                prompt=user(q),
                chosen=[{"role": "assistant", "content": IDENTITY_ANSWER}],
                rejected=[{"role": "assistant", "content": "I am ChatGPT, made by OpenAI."}],
            )
            for q in IDENTITY_QUESTIONS
        ]
    )
    model, tok = notebook_model()
    dpo = DPOTrainer(model=model, args=DPOConfig(**common, max_length=64), train_dataset=pairs, processing_class=tok)
    dpo.train()
    margins = [h["rewards/margins"] for h in dpo.state.log_history if "rewards/margins" in h]
    assert len(margins) == 4 and margins[-1] > margins[0], margins

    def says_nova(completions, **kwargs):
        return [float("Nova" in str(c)) for c in completions]

    model, tok = notebook_model()
    prompts = Dataset.from_list([dict(prompt=user(q)) for q in IDENTITY_QUESTIONS])
    args = GRPOConfig(**common, num_generations=2, max_completion_length=8)
    grpo = GRPOTrainer(model=model, reward_funcs=says_nova, args=args, train_dataset=prompts, processing_class=tok)
    grpo.train()
    assert grpo.state.global_step == 4
    assert any("reward" in h for h in grpo.state.log_history)


def test_grpo_notebook_fast_generate_save_lora_and_load_lora(tiny_qwen3, tmp_path, capsys):
    """Unsloth's GRPO notebooks load with fast_inference=True (vLLM, there), train, then compare
    `model.fast_generate(text, sampling_params=SamplingParams(...), lora_request=None)[0].outputs[0].text` (the base
    model, as vLLM's weights are the base's) with the same call given `lora_request=model.load_lora(path)` after
    `model.save_lora(path)`. Without vLLM both run on the engine's decoder and give what transformers' generate gives
    without and with the adapters."""
    from datasets import Dataset
    from safetensors import safe_open
    from trl import GRPOConfig, GRPOTrainer

    from tunesmith import SamplingParams

    model, tok = FastLanguageModel.from_pretrained(
        str(tiny_qwen3), max_seq_length=128, load_in_4bit=False, fast_inference=True, max_lora_rank=8,
        gpu_memory_utilization=0.6,
    )  # fmt: skip
    said = capsys.readouterr().out
    assert "fast_inference=True changes nothing: vLLM is not used; model.fast_generate runs on" in said
    assert "max_lora_rank=8 changes nothing" in said and "gpu_memory_utilization=0.6 changes nothing" in said
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16)
    prompts = Dataset.from_list([dict(prompt=[{"role": "user", "content": q}]) for q in IDENTITY_QUESTIONS])
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"), max_steps=2, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=8, learning_rate=5e-2, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model, reward_funcs=lambda completions, **kw: [float(len(str(c))) for c in completions], args=args,
        train_dataset=prompts, processing_class=tok,
    )  # fmt: skip
    assert trainer.train().global_step == 2 and model.training

    text = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], tokenize=False,
                                   add_generation_prompt=True)  # fmt: skip
    ids = tok(text, return_tensors="pt")["input_ids"]

    def transformers_reply(adapters: bool) -> list[int]:
        model.eval()
        with torch.no_grad(), contextlib.nullcontext() if adapters else model.disable_adapter():
            out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=[])
        model.train()
        return out[0, ids.shape[1] :].tolist()

    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    base = model.fast_generate([text], sampling_params=greedy, lora_request=None)
    assert len(base) == 1 and base[0].prompt == text and base[0].prompt_token_ids == ids[0].tolist()
    (first,) = base[0].outputs
    assert first.token_ids == transformers_reply(adapters=False) and first.finish_reason == "length"
    assert first.text == tok.decode(first.token_ids, skip_special_tokens=True) and model.training

    model.save_lora(tmp_path / "grpo_saved_lora")
    with safe_open(tmp_path / "grpo_saved_lora" / "adapter_model.safetensors", framework="pt") as f:
        for key in f.keys():  # the notebook's check that training moved every adapter weight
            tensor = f.get_tensor(key)
            assert (tensor == 0).sum().item() != tensor.numel()
    request = model.load_lora(tmp_path / "grpo_saved_lora")
    tuned = model.fast_generate(text, sampling_params=greedy, lora_request=request)[0].outputs[0]
    assert tuned.token_ids == transformers_reply(adapters=True) != first.token_ids

    # another adapter in the model (training went on): the saved one is swapped in for the call, then put back
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in lora:
            p.add_(0.5)
    moved = [p.detach().clone() for p in lora]
    assert model.fast_generate(text, sampling_params=greedy, lora_request=request)[0].outputs[0] == tuned
    assert all(torch.equal(p, m) for p, m in zip(lora, moved, strict=True))

    sampled = SamplingParams(n=2, temperature=1.0, top_k=-1, top_p=0.9, max_tokens=6, seed=3407, ignore_eos=True)
    two = model.fast_generate([text, text], sampling_params=sampled, lora_request=request)
    assert [len(r.outputs) for r in two] == [2, 2] and two[0].outputs == two[1].outputs  # one seed, same samples
    assert [o.index for o in two[0].outputs] == [0, 1]
    cut = tuned.text[len(tuned.text) // 2 :][:3]
    stop = model.fast_generate(text, sampling_params=SamplingParams(temperature=0, max_tokens=8, stop=[cut],
                                                                    ignore_eos=True), lora_request=request)  # fmt: skip
    assert stop[0].outputs[0].text == tuned.text[: tuned.text.find(cut)] and stop[0].outputs[0].finish_reason == "stop"
    kept = SamplingParams(temperature=0, max_tokens=8, stop=cut, include_stop_str_in_output=True, ignore_eos=True)
    assert model.fast_generate(text, sampling_params=kept, lora_request=request)[0].outputs[0].text.endswith(cut)

    assert model.fast_generate(ids, max_new_tokens=3).shape[1] == ids.shape[1] + 3  # token ids: model.generate
    for call, message in [
        (lambda: SamplingParams(presence_penalty=0.5), "SamplingParams: Tunesmith's decoder has no 'presence_penalty'"),
        (lambda: model.load_lora(tmp_path / "none"), "holds no saved adapter.*model.save_lora"),
        (lambda: model.fast_generate(text, max_new_tokens=3), "no 'max_new_tokens' argument for text prompts"),
        (lambda: model.fast_generate([ids[0].tolist()]), "a string or a list of strings"),
        (lambda: model.fast_generate(ids, sampling_params=greedy), "sampling_params and lora_request go with text"),
    ]:
        with pytest.raises(UserError, match=message):
            call()


# ------------------------------------------------------------------------------------------------------ CPU, no Triton

CPU_STEPS = """
import json, os, sys, time
import transformers  # imported first, as notebooks do: the interpreter must not be switched on after this
from tunesmith import FastLanguageModel
model, tok = FastLanguageModel.from_pretrained(sys.argv[1], max_seq_length=64, load_in_4bit=False)
model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16)
from datasets import Dataset
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer
from kernels import dispatch
steps = []
class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()
    def on_step_end(self, args, state, control, **kw):
        steps.append(time.perf_counter() - self.t)
rows = Dataset.from_list([{"text": "Who are you? I am Nova, built by Tunesmith Labs."}] * 12)
args = SFTConfig(output_dir=sys.argv[2], max_steps=4, per_device_train_batch_size=2, bf16=False, report_to="none",
                 save_strategy="no", learning_rate=1e-3, logging_steps=1)
trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=rows, args=args, callbacks=[Clock()])
trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
interpret = os.environ.get("TRITON_INTERPRET")
print(json.dumps(dict(steps=steps, losses=losses, backend=dispatch.BACKEND, interpret=interpret)))
"""


def test_cpu_training_runs_no_triton_interpreter(tiny_qwen3, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TUNESMITH_KERNELS")}
    script = tmp_path / "steps.py"
    script.write_text(CPU_STEPS)
    res = subprocess.run(
        [sys.executable, str(script), str(tiny_qwen3), str(tmp_path / "out")],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "loss: TRL's trainers compute it in torch on the CPU" in res.stdout
    got = json.loads(res.stdout.strip().splitlines()[-1])
    # TRL's kernel is not run without the interpreter (it would fail on CPU tensors), nor is the interpreter switched on
    assert got["interpret"] is None and got["backend"] == "reference"
    assert len(got["steps"]) == 4 and max(got["steps"][1:]) < 1.0, got["steps"]
    assert len(got["losses"]) == 4 and all(math.isfinite(x) for x in got["losses"])


@pytest.mark.parametrize("softcap, outputs", [(None, ("entropy", "is_top1")), (30.0, OPTIONAL_OUTPUTS)])
def test_torch_loss_matches_trls_kernel(softcap, outputs):
    from trl.kernels import ChunkedLogProbFunction

    torch.manual_seed(0)
    hidden = torch.randn(7, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (7,))
    args = (None, targets, 0.7, 32, softcap, 1.5, outputs)
    ours = chunked_logprob(hidden, weight, *args)
    theirs = ChunkedLogProbFunction.apply(hidden, weight, *args)  # in Triton's interpreter (conftest)
    for a, b in zip(ours, theirs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    grads = [torch.autograd.grad(out[0].sum() + out[1].sum(), (hidden, weight)) for out in (ours, theirs)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------------------ memory


def test_from_pretrained_plans_memory_like_the_cli(tiny_qwen3, capsys, monkeypatch):
    """The notebook API asks the CLI's planner (engine.models.loading.plan_memory) for max_seq_length on this machine
    and loads as it says; when nothing fits, the plan's reason and figures are the error."""
    from engine.core.hardware import choose_placement
    from engine.models.loading import plan_memory, read_config

    model, _ = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=256)
    spec = model.tunesmith_spec
    cli = plan_memory(spec, read_config(tiny_qwen3), choose_placement(spec.device, spec.dtype))
    assert model.memory_plan == cli and cli.describe() in capsys.readouterr().out
    peft = FastLanguageModel.get_peft_model(model, r=4)
    assert peft.memory_plan is model.memory_plan

    monkeypatch.setenv("TUNESMITH_RAM_GIB", "0.0001")  # plan for a machine with (almost) no free RAM
    with pytest.raises(UserError, match=r"needs about \d+\.\d GiB of host RAM.*and 0\.0 GiB is free"):
        FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=256)


def test_refused_tokens_are_never_shown(tiny_qwen3, tmp_path):
    """Unsloth notebooks pass token="hf_..." to from_pretrained and the save calls; the refusal (shown in the notebook's
    output, which users share) must not carry the token itself."""
    secret = "hf_tunesmithRefusedToken0123456789abcXYZ"
    with pytest.raises(UserError, match="token=\\.\\.\\. is not supported; set the HF_TOKEN") as loading:
        FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False, token=secret)
    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    with pytest.raises(UserError, match="token=\\.\\.\\. is not supported; a token is for uploads") as merged:
        model.save_pretrained_merged(tmp_path / "merged", tok, token=secret)
    with pytest.raises(UserError, match="token=\\.\\.\\. is not supported") as gguf:
        model.save_pretrained_gguf(tmp_path / "gguf", tok, token=secret)
    for err in (loading, merged, gguf):
        assert secret not in str(err.value)


def test_load_in_16bit_is_16bit_lora(tiny_qwen3):
    """Unsloth's Qwen3.5 and QAT guides load for 16-bit LoRA with load_in_16bit=True (load_in_4bit=False or none)."""
    for kwargs in (dict(load_in_4bit=False, load_in_16bit=True), dict(load_in_16bit=True)):
        model, _ = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, **kwargs)
        assert model.tunesmith_spec.method == "lora" and not getattr(model, "is_loaded_in_4bit", False)
    model, _ = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_16bit=False)
    assert model.tunesmith_spec.method == "qlora"
    with pytest.raises(UserError, match="load_in_4bit=True and load_in_16bit=True ask for two weight formats"):
        FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=True, load_in_16bit=True)


def test_push_to_hub_uses_the_login_token(tiny_qwen3, tmp_path, monkeypatch, capsys):
    """A notebook logged in with notebook_login() / `hf auth login` has a stored token and no HF_TOKEN; Unsloth
    notebooks then push with token="" (or none). The push uses the stored token (here it gets as far as the upload,
    which fails offline), never shown; without any token the sentence says how to give one."""
    from huggingface_hub import constants

    secret = "hf_tunesmithLoginToken0123456789abcXYZ"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    with pytest.raises(UserError, match="needs a write token: set HF_TOKEN, pass token=.*notebook_login\\(\\)") as err:
        model.push_to_hub_merged("someone/tiny-merged", tok, token="")
    assert "Export tab" not in str(err.value) and list(tmp_path.iterdir()) == []

    stored = tmp_path / "stored" / "token"
    stored.parent.mkdir()
    stored.write_text(secret)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(stored))
    with pytest.raises(UserError, match="Uploading 'tiny-gguf' to 'someone/tiny-gguf' failed") as err:
        model.push_to_hub_gguf("someone/tiny-gguf", tok, quantization_method="f16", token="")
    out = capsys.readouterr()
    assert secret not in out.out + out.err + str(err.value)


def test_adapter_folder_keeps_checkpointing_off_when_asked(tiny_qwen3, tmp_path):
    """from_pretrained on an adapter folder applies use_gradient_checkpointing itself (no get_peft_model call)."""
    model, _ = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8).save_pretrained(tmp_path / "adapter")
    again, _ = FastLanguageModel.from_pretrained(
        str(tmp_path / "adapter"), max_seq_length=128, load_in_4bit=False, use_gradient_checkpointing=False
    )
    assert not again.is_gradient_checkpointing and not again.tunesmith_spec.gradient_checkpointing
    again, _ = FastLanguageModel.from_pretrained(str(tmp_path / "adapter"), max_seq_length=128, load_in_4bit=False)
    assert again.is_gradient_checkpointing  # "unsloth" by default


def test_full_finetune_saved_as_lora_is_refused_before_saving(tiny_llama, tmp_path):
    """A fully fine-tuned model has no adapter: save_method="lora" is refused at once, in the user's terms (it saved
    the whole model to a hidden folder first, then named that folder in the sentence)."""
    model, tok = FastLanguageModel.from_pretrained(str(tiny_llama), max_seq_length=128, full_finetuning=True)
    with pytest.raises(UserError) as err:
        model.save_pretrained_merged(tmp_path / "adapter", tok, save_method="lora")
    assert "fully fine-tuned" in str(err.value) and 'save_method="merged_16bit"' in str(err.value)
    assert ".source" not in str(err.value) and list(tmp_path.iterdir()) == []


def test_save_pretrained_gguf_takes_a_list_of_methods(tiny_qwen3, tmp_path, monkeypatch):
    """Unsloth notebooks pass quantization_method=["q4_k_m", "q8_0", ...]: every file goes into the one folder, with
    the first method's Modelfile, as Unsloth writes them (push_to_hub_gguf uploads that folder)."""
    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    results = model.save_pretrained_gguf(tmp_path / "model", tok, quantization_method=["q8_0", "F16", "fast_quantized"])
    assert [r.format for r in results] == ["gguf-q8_0", "gguf-f16"]  # fast_quantized is q8_0 again
    assert all(r.path == tmp_path / "model" for r in results)
    assert sorted(os.listdir(tmp_path / "model")) == ["Modelfile", "model-f16.gguf", "model-q8_0.gguf"]
    assert "FROM ./model-q8_0.gguf" in (tmp_path / "model" / "Modelfile").read_text()
    assert os.listdir(tmp_path) == ["model"]  # no hidden leftovers
    with pytest.raises(UserError, match="quantization_method=\\[\\] names no method"):
        model.save_pretrained_gguf(tmp_path / "none", tok, quantization_method=[])
    with pytest.raises(UserError, match="quantization_method='q2_k' is not supported"):
        model.save_pretrained_gguf(tmp_path / "bad", tok, quantization_method=["q8_0", "q2_k"])
    assert os.listdir(tmp_path) == ["model"]

    monkeypatch.chdir(tmp_path)  # offline, the upload of the one folder fails after the export
    with pytest.raises(UserError, match="Uploading 'tiny-gguf' to 'someone/tiny-gguf' failed"):
        model.push_to_hub_gguf("someone/tiny-gguf", tok, quantization_method=["q8_0", "f16"], token="hf_x")
    assert sorted(os.listdir(tmp_path / "tiny-gguf")) == ["Modelfile", "tiny-gguf-f16.gguf", "tiny-gguf-q8_0.gguf"]


def test_from_pretrained_takes_a_path_and_dtype_auto(tiny_qwen3):
    """Scripts pass the model folder as a pathlib.Path and transformers' dtype="auto"; both load as their string /
    None forms do (a Path raised AttributeError, "auto" was refused)."""
    from pathlib import Path

    model, tok = FastLanguageModel.from_pretrained(Path(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    assert model.tunesmith_spec.model == str(tiny_qwen3) and tok.model_max_length == 128
    model, _ = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False, dtype="auto")
    assert model.tunesmith_spec.dtype == "auto" and model.dtype == torch.float32  # the CPU's pick, as dtype=None


def test_chat_helpers_refuse_other_arguments_with_a_sentence(tiny_qwen3, tmp_path):
    """Unsloth's get_chat_template(system_message=...), train_on_responses_only(num_proc=...) and
    standardize_sharegpt(aliases_for_assistant=...) were TypeErrors; each is a sentence saying what to do."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    with pytest.raises(UserError, match='get_chat_template: system_message=.*put .*"system".* first in each'):
        get_chat_template(tok, chat_template="qwen-2.5", system_message="You are Nova.")
    get_chat_template(tok, chat_template="qwen-2.5", system_message=None)
    with pytest.raises(UserError, match="get_chat_template: Tunesmith has no 'patch' argument; it takes tokenizer"):
        get_chat_template(tok, chat_template="qwen-2.5", patch=True)
    rows = Dataset.from_list([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Yo"}]}])
    with pytest.raises(UserError, match="standardize_sharegpt: aliases_for_assistant=.*not supported; rename"):
        standardize_sharegpt(rows, aliases_for_assistant=["bot"])
    with pytest.raises(UserError, match="train_on_responses_only: num_proc=4 is not supported"):
        train_on_responses_only(None, "<|im_start|>user\n", "<|im_start|>assistant\n", num_proc=4)


def test_get_peft_model_target_modules_none_is_every_projection(tiny_qwen3):
    """target_modules=None (Unsloth's FastModel default, passed through by ported code) means every linear layer of a
    decoder block, as FastModel.get_peft_model takes it; it raised TypeError ('NoneType' object is not iterable)."""
    model, _ = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, target_modules=None)
    assert set(model.peft_config["default"].target_modules) == set(ALL_LINEAR)


def test_push_after_a_save_into_the_repositorys_name(tiny_qwen3, tmp_path, monkeypatch, capsys):
    """Unsloth notebooks save into "model" in one line and push to "hf/model" in the next; the push's export folder
    (named after the repository) then exists. It goes to the next free name, and the saved folder is left as it was
    (offline, the upload itself fails after the export)."""
    monkeypatch.chdir(tmp_path)
    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    model.save_pretrained_merged("model", tok, save_method="lora")
    saved = sorted(os.listdir(tmp_path / "model"))
    with pytest.raises(UserError, match="Uploading 'model-2' to 'someone/model' failed"):
        model.push_to_hub_merged("someone/model", tok, save_method="merged_16bit", token="hf_x")
    assert "'model' exists here; exporting into 'model-2' for the upload" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "model")) == saved and "model.safetensors" in os.listdir(tmp_path / "model-2")
    with pytest.raises(UserError, match="Uploading 'model-3' to 'someone/model' failed"):
        model.push_to_hub_gguf("someone/model", tok, quantization_method="q8_0", token="hf_x")
    assert "model-3-q8_0.gguf" in os.listdir(tmp_path / "model-3")


def test_for_inference_pads_batches_on_the_left(tiny_llama):
    """for_inference turns the tokenizer from from_pretrained to left padding, as Unsloth's does, so a batch of
    prompts of different lengths generates what each prompt alone does (right padding put the pad tokens between a
    short prompt and its reply); for_training turns it back to right padding."""
    model, tok = FastLanguageModel.from_pretrained(str(tiny_llama), max_seq_length=256, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    tok.padding_side = "right"
    FastLanguageModel.for_inference(model)
    assert tok.padding_side == "left"
    prompts = ["Who are you?", "Tell me about yourself. What can you do today?"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    for row, prompt in zip(out, prompts, strict=True):
        alone = model.generate(**tok([prompt], return_tensors="pt"), max_new_tokens=6, do_sample=False)
        assert row[-6:].tolist() == alone[0, -6:].tolist(), prompt
    FastLanguageModel.for_training(model)
    assert tok.padding_side == "right"


def test_get_peft_model_on_a_loaded_adapter_with_its_settings_keeps_it(tiny_qwen3, tmp_path, capsys):
    """A notebook switched to model_name="lora_model" (to train on) still runs its get_peft_model cell: with the
    adapter's own settings the loaded adapter is kept as it is (Unsloth passes it through too); other settings are a
    sentence, as before."""
    model, _ = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"])
    model.save_pretrained(tmp_path / "lora_model")
    loaded, _ = FastLanguageModel.from_pretrained(str(tmp_path / "lora_model"), max_seq_length=128, load_in_4bit=False)
    weights = {n: p.detach().clone() for n, p in loaded.named_parameters() if p.requires_grad}
    capsys.readouterr()
    again = FastLanguageModel.get_peft_model(
        loaded, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "no_such_proj"], random_state=1
    )
    assert again is loaded and "has these LoRA adapters already; kept as they are" in capsys.readouterr().out
    for n, p in again.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, weights[n]), n
    with pytest.raises(UserError, match="already has LoRA adapters \\(r=8, lora_alpha=16.*differ"):
        FastLanguageModel.get_peft_model(loaded, r=16, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"])


KILLED_SAVE = """
import os, signal, sys
from tunesmith import FastLanguageModel
from engine.export import merge
model, tok = FastLanguageModel.from_pretrained(sys.argv[1], max_seq_length=64, load_in_4bit=False)
model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
merge.export = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # killed while it merges (out of memory)
model.save_pretrained_merged(os.path.join(sys.argv[2], "model"), tok)
"""


def test_a_save_killed_midway_leaves_nothing_for_good(tiny_qwen3, tmp_path):
    """A save killed while it merges (the out-of-memory killer, a Colab runtime stopped) left its hidden copy of the
    trained weights (the whole model after full fine-tuning) beside the destination for good; the next save there
    removes it, as the engine's exports remove their half-built folders."""
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SAVE)
    out = tmp_path / "out"
    out.mkdir()
    res = subprocess.run(
        [sys.executable, str(script), str(tiny_qwen3), str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == -9, res.stdout[-2000:] + res.stderr[-2000:]
    assert len(list(out.iterdir())) == 1  # the hidden copy the killed save left
    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=64, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    model.save_pretrained_merged(out / "model", tok, save_method="lora")
    assert os.listdir(out) == ["model"]
