"""`import tunesmith` runs the older TRL / transformers spellings (tunesmith.compat): each becomes its current spelling
with one log line, the result equals what the current spelling makes, and current spellings are untouched."""

import math

import pytest
import torch
from conftest import IDENTITY_ANSWER, IDENTITY_QUESTIONS

from tunesmith import FastLanguageModel, UserError, compat

CPU = dict(report_to="none", use_cpu=True, bf16=False)  # settings both sides share, so only the spelling differs


def made(cls, **kwargs) -> dict:
    return cls(output_dir="out", **kwargs).to_dict()


def translated(capsys, cls, old: dict, new: dict) -> str:
    """The log of making `cls` from `old`, after checking it equals `cls` made from `new`."""
    capsys.readouterr()
    got = made(cls, **CPU, **old)
    log = capsys.readouterr().out
    assert got == made(cls, **CPU, **new)
    return log


@pytest.mark.parametrize(
    "cls_name, old, new",
    [
        ("TrainingArguments", dict(warmup_ratio=0.1), dict(warmup_steps=0.1)),
        (
            "TrainingArguments",
            dict(evaluation_strategy="steps", eval_steps=5),
            dict(eval_strategy="steps", eval_steps=5),
        ),
        ("TrainingArguments", dict(per_gpu_train_batch_size=3), dict(per_device_train_batch_size=3)),
        ("TrainingArguments", dict(group_by_length=True), dict(train_sampling_strategy="group_by_length")),
        ("TrainingArguments", dict(overwrite_output_dir=True), dict()),
        ("SFTConfig", dict(max_seq_length=77, warmup_ratio=0.03), dict(max_length=77, warmup_steps=0.03)),
        ("DPOConfig", dict(max_prompt_length=512, max_length=1024), dict(max_length=1024)),
        ("GRPOConfig", dict(max_prompt_length=512), dict()),
    ],
)
def test_old_config_spellings_make_the_current_config(capsys, cls_name, old, new):
    import transformers
    import trl

    cls = getattr(trl, cls_name, None) or getattr(transformers, cls_name)
    log = translated(capsys, cls, old, new)
    assert len(log.splitlines()) == len(old) - ("eval_steps" in old) - ("max_length" in old)
    assert all(line.startswith(f"tunesmith: {cls_name}") for line in log.splitlines())


def test_current_spellings_are_untouched(capsys):
    """Every argument the installed classes take goes through as given: the wrapped and the original __init__ make
    the same config, with nothing logged; warmup_ratio is left alone where warmup_steps wins, as it always did."""
    from transformers import TrainingArguments
    from trl import DPOConfig, SFTConfig

    current = [
        (TrainingArguments, dict(warmup_steps=3, eval_strategy="no", learning_rate=1e-3, max_grad_norm=0.3)),
        (SFTConfig, dict(max_length=64, packing=True, dataset_text_field="text", warmup_steps=0.1)),
        (DPOConfig, dict(max_length=64, beta=0.2)),
    ]
    wrapped = [made(cls, **CPU, **kw) for cls, kw in current]
    assert capsys.readouterr().out == ""
    compat.uninstall()
    try:
        assert not hasattr(TrainingArguments.__init__, "__tunesmith_wrapped__")
        assert [made(cls, **CPU, **kw) for cls, kw in current] == wrapped
    finally:
        compat.install()
    both = made(TrainingArguments, **CPU, warmup_steps=7, warmup_ratio=0.5)
    assert both["warmup_steps"] == 7 and "warmup_steps was given too" in capsys.readouterr().out


def test_bf16_without_a_gpu_gets_use_cpu(capsys):
    """TRL's configs default to bf16, which transformers 5 refuses without a GPU unless use_cpu is set."""
    from trl import DPOConfig

    if torch.cuda.is_available():
        pytest.skip("only a machine without a GPU needs use_cpu")
    config = DPOConfig(output_dir="out", report_to="none")
    assert config.bf16 and config.use_cpu
    assert "bf16 without a GPU needs use_cpu=True" in capsys.readouterr().out
    assert not DPOConfig(output_dir="out", report_to="none", fp16=False, bf16=False).use_cpu


def test_arguments_of_no_library_are_refused_with_what_to_write():
    from transformers import TrainingArguments

    with pytest.raises(UserError, match="'offload_params_to_cpu' is not an argument of any.*drop it"):
        TrainingArguments(output_dir="out", offload_params_to_cpu=False)
    with pytest.raises(UserError, match="'offload_activations'.*activation_offloading=True"):
        TrainingArguments(output_dir="out", offload_activations=False)
    with pytest.raises(TypeError, match="no_such_argument"):  # anything else: the library's own error
        TrainingArguments(output_dir="out", no_such_argument=1)


def test_old_trainer_spellings_train(tiny_qwen3, tmp_path, capsys):
    """SFTTrainer(tokenizer=, dataset_text_field=, max_seq_length=, packing=) with a TrainingArguments, as 2024
    notebooks write it, trains; DPOTrainer(tokenizer=) builds. One log line per translated argument."""
    from datasets import Dataset
    from transformers import TrainingArguments
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    texts = [f"Q: {q}\nA: {IDENTITY_ANSWER}{tok.eos_token}" for q in IDENTITY_QUESTIONS]
    capsys.readouterr()
    trainer = SFTTrainer(
        model=model,
        tokenizer=tok,
        train_dataset=Dataset.from_dict({"body": texts}),
        dataset_text_field="body",
        max_seq_length=48,
        packing=False,
        dataset_num_proc=1,
        args=TrainingArguments(output_dir=str(tmp_path / "sft"), max_steps=2, report_to="none", save_strategy="no"),
    )
    log = [line for line in capsys.readouterr().out.splitlines() if line.startswith("tunesmith:")]
    assert log == [
        "tunesmith: SFTTrainer(tokenizer=...) is processing_class=... now; translated",
        "tunesmith: SFTTrainer(max_seq_length=...) is SFTConfig(max_length=...) now; translated",
        "tunesmith: SFTTrainer(dataset_text_field=...) is SFTConfig(dataset_text_field=...) now; moved into args",
        "tunesmith: SFTTrainer(packing=...) is SFTConfig(packing=...) now; moved into args",
        "tunesmith: SFTTrainer(dataset_num_proc=...) is SFTConfig(dataset_num_proc=...) now; moved into args",
    ]
    assert isinstance(trainer.args, SFTConfig) and trainer.processing_class is tok
    assert (trainer.args.max_length, trainer.args.dataset_text_field, trainer.args.max_steps) == (48, "body", 2)
    assert max(len(row["input_ids"]) for row in trainer.train_dataset) <= 48
    assert trainer.train().global_step == 2

    pairs = Dataset.from_dict({"prompt": ["Who are you?"], "chosen": [IDENTITY_ANSWER], "rejected": ["No idea."]})
    config = DPOConfig(output_dir=str(tmp_path / "dpo"), max_length=64, max_prompt_length=32, report_to="none")
    dpo = DPOTrainer(model=model, ref_model=None, train_dataset=pairs, tokenizer=tok, args=config)
    assert dpo.processing_class is tok and dpo.args.max_length == 64


def test_the_orpo_notebook_imports_its_trainer_from_trl(tiny_qwen3, tmp_path, capsys):
    """Unsloth's ORPO notebook writes `from trl import ORPOConfig, ORPOTrainer`, an ImportError since TRL 1.x moved
    them to trl.experimental.orpo; with `import tunesmith` the line works, and its older spellings (tokenizer=,
    max_prompt_length) are translated as for DPO, so the notebook trains unchanged but for its imports."""
    from datasets import Dataset
    from trl import ORPOConfig, ORPOTrainer

    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    pairs = Dataset.from_dict(
        {"prompt": ["Who are you?"] * 2, "chosen": [IDENTITY_ANSWER] * 2, "rejected": ["No."] * 2}
    )
    capsys.readouterr()
    args = ORPOConfig(output_dir=str(tmp_path), max_length=64, max_prompt_length=32, max_steps=1, beta=0.1, **CPU)
    trainer = ORPOTrainer(model=model, train_dataset=pairs, tokenizer=tok, args=args)
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("tunesmith:")] == [
        "tunesmith: ORPOConfig: max_prompt_length dropped (prompts are no longer cut on their own; max_length (DPO) "
        "or the model's context (GRPO) bounds the whole sequence)",
        "tunesmith: ORPOTrainer(tokenizer=...) is processing_class=... now; translated",
    ]
    assert trainer.processing_class is tok and trainer.train().global_step == 1


def test_the_cpo_notebook_imports_its_trainer_from_trl(tiny_qwen3, tmp_path, capsys):
    """`from trl import CPOConfig, CPOTrainer` (Unsloth's CPO / SimPO notebooks) is an ImportError since TRL 1.x moved
    them to trl.experimental.cpo; with `import tunesmith` the line works, its older spellings are translated as for
    ORPO, and the trainer trains the notebook model (SimPO is CPOConfig(loss_type="simpo", cpo_alpha=0))."""
    from datasets import Dataset
    from trl import CPOConfig, CPOTrainer
    from trl.experimental.cpo import CPOTrainer as Moved

    assert CPOTrainer is Moved
    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    pairs = Dataset.from_dict(
        {"prompt": ["Who are you?"] * 2, "chosen": [IDENTITY_ANSWER] * 2, "rejected": ["No."] * 2}
    )
    capsys.readouterr()
    args = CPOConfig(
        output_dir=str(tmp_path), max_length=64, max_prompt_length=32, max_steps=1, loss_type="simpo", cpo_alpha=0.0,
        **CPU,
    )  # fmt: skip
    trainer = CPOTrainer(model=model, train_dataset=pairs, tokenizer=tok, args=args)
    log = [line for line in capsys.readouterr().out.splitlines() if line.startswith("tunesmith:")]
    assert log == [
        "tunesmith: CPOConfig: max_prompt_length dropped (prompts are no longer cut on their own; max_length (DPO) "
        "or the model's context (GRPO) bounds the whole sequence)",
        "tunesmith: CPOTrainer(tokenizer=...) is processing_class=... now; translated",
    ]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainer.processing_class is tok and trainer.train().global_step == 1
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_apply_chat_template_renders_a_dataset_column_as_a_batch(tiny_qwen3, capsys):
    """Qwen3 notebooks render `dataset["conversations"]` in one call; datasets 4 gives a Column there (a list before),
    which transformers alone renders into one string of empty turns. With tunesmith it renders each conversation."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    convos = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": IDENTITY_ANSWER}] for q in IDENTITY_QUESTIONS
    ]
    column = Dataset.from_list([{"conversations": c} for c in convos])["conversations"]
    assert not isinstance(column, list)  # datasets 4's lazy column
    expected = [tok.apply_chat_template(c, tokenize=False) for c in convos]
    assert tok.apply_chat_template(column, tokenize=False) == expected
    assert tok.apply_chat_template(column, tokenize=False) == expected  # logged once only
    assert capsys.readouterr().out.count("apply_chat_template(Column): made a list") == 1
    assert tok.apply_chat_template(convos, tokenize=False) == expected  # lists go through as they are
    compat.uninstall()
    try:
        assert tok.apply_chat_template(column, tokenize=False) != expected  # what transformers does alone
    finally:
        compat.install()


def test_sft_text_rendered_with_bos_gets_one_bos(tiny_llama, tmp_path, capsys):
    """Llama 3 / Mistral notebooks render rows with apply_chat_template(tokenize=False), whose text starts with the
    BOS token, and their tokenizers add a BOS of their own: each example must start with one BOS, not two."""
    from datasets import Dataset
    from tiny import make_spm_tokenizer
    from tokenizers.processors import TemplateProcessing
    from trl import SFTConfig, SFTTrainer

    from tunesmith import get_chat_template

    tok = make_spm_tokenizer()  # "<s>" BOS; a post-processor adds it, as Llama 3's and Mistral's tokenizer.json do
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tok = get_chat_template(tok, chat_template="llama-3.1")
    model, _ = FastLanguageModel.from_pretrained(str(tiny_llama), max_seq_length=128, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    convos = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": IDENTITY_ANSWER}] for q in IDENTITY_QUESTIONS
    ]
    texts = [tok.apply_chat_template(c, tokenize=False) for c in convos]
    assert texts[0].startswith("<s><|start_header_id|>")
    rows = Dataset.from_dict({"text": texts})
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none", max_length=128)
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=rows, eval_dataset=rows, args=args)
    once = tok(texts[0], add_special_tokens=False)["input_ids"]  # the text's own "<s>", nothing added
    for dataset in (trainer.train_dataset, trainer.eval_dataset):
        ids = dataset[0]["input_ids"]
        assert ids[:2] == [bos, once[1]] and ids[: len(once)] == once  # (TRL appends an EOS after)
    assert "the train texts start with <s>, which the tokenizer adds again" in capsys.readouterr().out

    plain = SFTTrainer(
        model=model, processing_class=tok, train_dataset=Dataset.from_dict({"text": ["Hi there"]}), args=args
    )
    assert plain.train_dataset[0]["input_ids"][:2] == tok("Hi there")["input_ids"][:2]  # text without BOS: unchanged


def test_sft_max_length_follows_the_models_max_seq_length(tiny_qwen3, tmp_path, capsys):
    """Unsloth notebooks set the length once, in from_pretrained(max_seq_length=...), and give SFTConfig none; Unsloth's
    trainer then cuts at the model's max_seq_length. TRL's own default (1024) would train longer rows than the memory
    plan was made for (or cut a longer max_seq_length at 1024), silently. A length the notebook gives is kept."""
    from datasets import Dataset
    from transformers import TrainingArguments
    from trl import SFTConfig, SFTTrainer

    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=64, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    rows = Dataset.from_dict({"text": [" ".join(["Who are you?"] * 40)] * 2})  # about 160 tokens each
    out = str(tmp_path / "out")
    for args in (
        SFTConfig(output_dir=out, bf16=False, report_to="none"),
        TrainingArguments(output_dir=out, report_to="none"),
        None,
    ):
        capsys.readouterr()
        trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=rows, args=args)
        assert trainer.args.max_length == 64, type(args)
        assert max(len(r["input_ids"]) for r in trainer.train_dataset) == 64
        assert "max_length is the model's max_seq_length (64)" in capsys.readouterr().out
    given = SFTConfig(output_dir=out, bf16=False, report_to="none", max_length=32)
    assert SFTTrainer(model=model, processing_class=tok, train_dataset=rows, args=given).args.max_length == 32
    given = SFTConfig(output_dir=out, bf16=False, report_to="none", max_seq_length=1024)  # the old spelling
    assert SFTTrainer(model=model, processing_class=tok, train_dataset=rows, args=given).args.max_length == 1024
    old = SFTTrainer(model=model, tokenizer=tok, train_dataset=rows, max_seq_length=1024, args=None)
    assert old.args.max_length == 1024


def test_unsloth_trainer_patches_are_no_ops():
    """Unsloth's DPO/ORPO/KTO and early GRPO notebooks call PatchDPOTrainer() / PatchKTOTrainer() /
    PatchFastRL("GRPO", FastLanguageModel) before building the TRL trainer; they do nothing in Unsloth now, and TRL's
    trainers take Tunesmith's model as they are, so after the import change the lines run and change nothing."""
    import trl

    from tunesmith import PatchDPOTrainer, PatchFastRL, PatchKTOTrainer

    before = trl.DPOTrainer.__init__, trl.GRPOTrainer.__init__
    assert PatchDPOTrainer() is None and PatchKTOTrainer() is None
    assert PatchFastRL("GRPO", FastLanguageModel) is None and PatchFastRL() is None
    assert (trl.DPOTrainer.__init__, trl.GRPOTrainer.__init__) == before


def test_unsloth_trainer_trains_the_embeddings_at_their_own_rate(tiny_llama, tmp_path, capsys):
    """Unsloth's continued-pretraining notebooks list embed_tokens and lm_head in get_peft_model's target_modules
    (trained in full beside the adapters) and train with UnslothTrainer(args=UnslothTrainingArguments(learning_rate,
    embedding_learning_rate)). Both weights land in optimizer groups at embedding_learning_rate, the adapters at
    learning_rate: after one Adam step at a constant rate each weight moved by at most its own rate, and the largest
    move of each kind is that rate (Adam's first step is lr x sign(grad))."""
    from datasets import Dataset
    from safetensors.torch import load_file

    from tunesmith import UnslothTrainer, UnslothTrainingArguments

    model, tok = FastLanguageModel.from_pretrained(str(tiny_llama), max_seq_length=64, load_in_4bit=False)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"]
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, target_modules=targets, use_rslora=True)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    embed = {n for n in trained if "embed_tokens" in n or "lm_head" in n}
    assert sorted(n.split(".")[-4] for n in embed) == ["embed_tokens", "lm_head"]  # ...X.modules_to_save.default.weight
    assert all("modules_to_save" in n for n in embed) and model.tunesmith_spec.train_embeddings
    before = {n: p.detach().clone() for n, p in trained.items()}
    frozen = model.get_base_model().model.embed_tokens.original_module.weight.detach().clone()

    texts = [f"{q} {IDENTITY_ANSWER}" for q in IDENTITY_QUESTIONS]
    args = UnslothTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, learning_rate=5e-3,
        embedding_learning_rate=1e-3, lr_scheduler_type="constant", warmup_ratio=0.0, weight_decay=0.0,
        save_strategy="no", **CPU,
    )  # fmt: skip
    trainer = UnslothTrainer(
        model=model,
        tokenizer=tok,
        train_dataset=Dataset.from_dict({"text": texts}),
        dataset_text_field="text",
        max_seq_length=64,
        dataset_num_proc=1,
        args=args,
    )
    assert isinstance(trainer.args, UnslothTrainingArguments) and trainer.args.embedding_learning_rate == 1e-3
    capsys.readouterr()
    assert trainer.train().global_step == 1
    assert "embed_tokens and lm_head" in capsys.readouterr().out
    rate = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert {n for n, p in trained.items() if rate[id(p)] == 1e-3} == embed
    assert {n for n, p in trained.items() if rate[id(p)] == 5e-3} == set(trained) - embed
    for names, lr in ((embed, 1e-3), (set(trained) - embed, 5e-3)):
        moved = max((trained[n].detach() - before[n]).abs().max().item() for n in names)
        assert lr * 0.9 < moved < lr * 1.01, (lr, moved)
    assert torch.equal(model.get_base_model().model.embed_tokens.original_module.weight, frozen)

    adapter = model.save_pretrained_merged(tmp_path / "cpt-lora", tok, save_method="lora")
    saved = load_file(adapter.path / "adapter_model.safetensors")
    assert any("embed_tokens" in k for k in saved) and any("lm_head" in k for k in saved)
    again, _ = FastLanguageModel.from_pretrained(str(adapter.path), max_seq_length=64, load_in_4bit=False)
    assert sorted(n for n, p in again.named_parameters() if p.requires_grad) == sorted(trained)
    ids = tok(texts[:1], return_tensors="pt")["input_ids"]
    model.eval(), again.eval()
    with torch.no_grad():  # the trained embedding and head came back with the adapters
        torch.testing.assert_close(again(ids).logits, model(ids).logits)
        with model.disable_adapter():
            assert not torch.allclose(again(ids).logits, model(ids).logits)
    model.train()
    merged = model.save_pretrained_merged(tmp_path / "cpt-16bit", tok)
    weights = load_file(next(merged.path.glob("*.safetensors")))
    copy = next(p for n, p in trained.items() if "embed_tokens" in n)
    merged_embed = weights["model.embed_tokens.weight"]  # the trained copy, in the export's 16-bit dtype
    assert torch.equal(merged_embed, copy.detach().to(merged_embed.dtype))


def test_fp16_model_trains_its_embeddings_as_fp32_master_weights(tiny_llama):
    """Continued pretraining on a T4 (fp16): the embed_tokens and lm_head copies get_peft_model trains beside the
    adapters are fp32 master weights, the frozen weights stay fp16. Before, the copies were fp16, and fp16 mixed
    precision's loss scaler refused them ("Attempting to unscale FP16 gradients"): accelerate's on a GPU, run here by
    hand with torch's CPU autocast and scaler as accelerate runs them on a GPU (it runs neither on the CPU). Outside
    autocast (the chat after training) the copies take and give the model's fp16 activations."""
    model, tok = FastLanguageModel.from_pretrained(
        str(tiny_llama), max_seq_length=64, load_in_4bit=False, dtype=torch.float16
    )
    targets = ["q_proj", "v_proj", "embed_tokens", "lm_head"]
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, target_modules=targets)
    floating = [p for p in model.parameters() if p.is_floating_point()]
    assert {p.dtype for p in floating if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in floating if not p.requires_grad} == {torch.float16}

    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trained.items()}
    opt = torch.optim.AdamW(trained.values(), lr=1e-3, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # a first scale the tiny model's gradients fit in fp16
    ids = tok([f"{IDENTITY_QUESTIONS[0]} {IDENTITY_ANSWER}"], return_tensors="pt")["input_ids"]
    model.train()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(input_ids=ids, labels=ids).loss
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert math.isfinite(loss.item()) and scaler.get_scale() == 2.0**10  # the step was taken, not skipped
    assert all(torch.isfinite(p).all() for p in trained.values())
    for name in [n for n in trained if "modules_to_save" in n or "lora_B" in n]:  # A moves once B is not 0
        assert not torch.equal(trained[name], before[name]), name
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()


def test_unsloth_trainer_options(tiny_qwen3, tmp_path, capsys):
    """Without embedding_learning_rate the optimizer is the Trainer's own; with it but no embeddings trained, a line
    says it changes nothing. modules_to_save=["embed_tokens", "lm_head"] is the same as listing them as targets
    (Qwen3 ties them: one trainable copy); one of the two alone is refused with what to write."""
    from datasets import Dataset

    from tunesmith import UnslothTrainer, UnslothTrainingArguments, unsloth_train

    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=64, load_in_4bit=False)
    with pytest.raises(UserError, match="lm_head alone cannot be trained.*list both"):
        FastLanguageModel.get_peft_model(model, r=4, target_modules=["q_proj", "lm_head"])
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    rows = Dataset.from_dict({"text": [f"{q} {IDENTITY_ANSWER}" for q in IDENTITY_QUESTIONS]})
    out = str(tmp_path / "out")
    made = []
    for extra in (dict(), dict(embedding_learning_rate=1e-5)):
        args = UnslothTrainingArguments(output_dir=out, max_steps=1, **extra, **CPU)
        trainer = UnslothTrainer(model=model, processing_class=tok, train_dataset=rows, args=args)
        capsys.readouterr()
        trainer.create_optimizer()
        made.append([(len(g["params"]), g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups])
        said = "embedding_learning_rate=1e-05 changes nothing: embed_tokens and lm_head are not trained"
        assert (said in capsys.readouterr().out) == bool(extra)
    assert made[0] == made[1] and {lr for _, lr, _ in made[0]} == {args.learning_rate}  # the Trainer's own groups

    model, tok = FastLanguageModel.from_pretrained(str(tiny_qwen3), max_seq_length=64, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, modules_to_save=["embed_tokens", "lm_head"])
    copies = [n for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n]
    assert len(copies) == 1 and "embed_tokens" in copies[0]
    args = UnslothTrainingArguments(output_dir=out, max_steps=1, embedding_learning_rate=1e-5, **CPU)
    trainer = UnslothTrainer(model=model, processing_class=tok, train_dataset=rows, args=args)
    assert unsloth_train(trainer).global_step == 1  # the notebooks' spelling of trainer.train()
    groups = [(g["initial_lr"], len(g["params"])) for g in trainer.optimizer.param_groups if g["params"]]
    assert sorted(groups) == [(1e-5, 1), (args.learning_rate, 28)]  # the tied embedding's copy, the 28 LoRA weights


def test_grpo_config_takes_vllm_sampling_params(capsys):
    """Unsloth's GRPO notebooks pass GRPOConfig(vllm_sampling_params=SamplingParams(min_p=0.1, top_p=1.0, top_k=-1,
    seed=3407, stop=[eos], include_stop_str_in_output=True), temperature=1.0, ...); TRL's GRPOConfig has no such
    argument. Its sampling settings become GRPOConfig's own (those the notebook also gives keep the notebook's value),
    and the request options TRL has no use for are named in the log."""
    from trl import GRPOConfig

    from tunesmith import SamplingParams

    params = SamplingParams(min_p=0.1, top_p=1.0, top_k=-1, seed=3407, stop=["</s>"], include_stop_str_in_output=True)
    log = translated(
        capsys, GRPOConfig, dict(vllm_sampling_params=params, temperature=0.7), dict(temperature=0.7, min_p=0.1)
    )
    assert log.splitlines() == [
        "tunesmith: GRPOConfig(vllm_sampling_params=...) is GRPOConfig(top_p=..., top_k=..., min_p=..., "
        "repetition_penalty=...) now; translated",  # temperature: the notebook's own
        "tunesmith: GRPOConfig: vllm_sampling_params' seed, stop, include_stop_str_in_output dropped (vLLM's request "
        "options: TRL generates up to max_completion_length, stops at the model's EOS tokens and samples from the "
        "config's seed)",
    ]
