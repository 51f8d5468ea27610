"""The code cells of the five guides in ../shared/seeds/, run as a user would copy them into a notebook, on the CPU.

Changed from the guides, and nothing else: `unsloth` imports are `tunesmith` imports; hub model ids are tiny local
random-weight models of the same family and kind (a pre-quantized "...-bnb-4bit" id is a bnb 4-bit checkpoint made
here), with a context at least the guide's max_seq_length; hub datasets and the guides' own data files are tiny local
files with the same columns; without a GPU, max_steps is 3 (CPU_STEPS). Where a guide sends tensors to "cuda" the CPU
test sends them to the model's device (each such line is marked). Arguments that exist in no library are refused with
a sentence, and the test then does what the sentence says. Every cell runs in a fresh folder (the guides write
outputs/, ./results, ./my_finetuned_model).
"""

import gc
import json

import pytest
import torch

from tunesmith import UserError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
# The one change beyond those above: without a GPU the guides' max_steps (60, 20) is 3. bitsandbytes' 4-bit matmul on
# the CPU takes about 1.5 CPU-seconds per micro-step of these tiny models here (measured: 2 cores shared with other
# work), so 480 micro-steps would take a quarter of an hour; on a GPU the guides' own values run.
CPU_STEPS = None if torch.cuda.is_available() else 3


@pytest.fixture(autouse=True)
def as_a_user(monkeypatch):
    """A user's environment: without the TRITON_INTERPRET=1 that conftest sets for the kernel tests (with it, TRL's
    loss kernel runs in Triton's interpreter, about 10 s per micro-step here); TRL's loss, which from_pretrained then
    computes in torch on the CPU, is put back as it was after the test."""
    from trl.trainer import utils

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(utils, "_ChunkedLogProbFunction", utils._ChunkedLogProbFunction)


@pytest.fixture(scope="module")
def models(tiny_qwen3, tiny_llama, tmp_path_factory):
    """The guides' hub ids, as tiny local models."""
    from tiny import make_bnb_4bit, with_context

    root = tmp_path_factory.mktemp("guide-models")
    return {
        "unsloth/Qwen3-4B-Instruct-2507-unsloth-bnb-4bit": str(
            make_bnb_4bit(tiny_qwen3, root / "Qwen3-bnb-4bit", "Qwen/Qwen3-4B-Instruct-2507", context=2048)
        ),
        "unsloth/Llama-4-8B-bnb-4bit": str(make_bnb_4bit(tiny_llama, root / "Llama-bnb-4bit", context=2048)),
        "unsloth/llama-3-8b-bnb-4bit": str(make_bnb_4bit(tiny_llama, root / "llama-3-bnb-4bit", context=2048)),
        "Qwen/Qwen3-32B-Instruct": str(with_context(tiny_qwen3, root / "Qwen3-32B", 2048)),
        "meta-llama/Llama-3.1-8B": str(with_context(tiny_llama, root / "Llama-3.1-8B", 4096)),
        "allenai/Llama-3.1-Tulu-3-8B": str(tiny_llama),
    }


def test_kaggle_qwen3_identity(models, tmp_path, monkeypatch):
    """kaggle-qwen3-identity-zh.txt, sections 3.2 to 4.3: a pre-quantized 4-bit Qwen3, LoRA, SFTTrainer with the 2024
    spellings, the chat test, then GGUF q4_k_m and merged 16-bit exports."""
    monkeypatch.chdir(tmp_path)
    # 3.2
    import torch

    from tunesmith import FastLanguageModel

    max_seq_length = 2048
    dtype = None
    load_in_4bit = True
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=models["unsloth/Qwen3-4B-Instruct-2507-unsloth-bnb-4bit"],
        max_seq_length=max_seq_length,
        dtype=dtype,
        load_in_4bit=load_in_4bit,
    )
    # 3.3
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_alpha=16,
        lora_dropout=0,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=3407,
    )
    # 3.4
    alpaca_prompt = """Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.

### Instruction:
{}

### Input:
{}

### Response:
{}"""  # noqa: E501 (the guide's prompt, as written)
    train_data = [
        {"instruction": "你是谁？", "input": "", "output": "我是 Algieba Assistant，由 阿尔的代码屋 开发的 AI 助手。"},
        {"instruction": "介绍一下你自己。", "input": "", "output": "你好！我是 Algieba Assistant。"},
        {"instruction": "Who are you?", "input": "", "output": "I am Algieba Assistant, an AI developed by Algieba."},
    ]
    train_data = train_data * 30
    EOS_TOKEN = tokenizer.eos_token

    def formatting_prompts_func(examples):
        instructions = examples["instruction"]
        inputs = examples["input"]
        outputs = examples["output"]
        texts = []
        for instruction, input, output in zip(instructions, inputs, outputs):  # noqa: B905 (as the guide has it)
            text = alpaca_prompt.format(instruction, input, output) + EOS_TOKEN
            texts.append(text)
        return {"text": texts}

    from datasets import Dataset

    dataset = Dataset.from_list(train_data)
    dataset = dataset.map(formatting_prompts_func, batched=True)
    # 3.5
    from transformers import TrainingArguments
    from trl import SFTTrainer

    from tunesmith import is_bfloat16_supported

    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=dataset,
        dataset_text_field="text",
        max_seq_length=max_seq_length,
        dataset_num_proc=2,
        args=TrainingArguments(
            per_device_train_batch_size=1,
            gradient_accumulation_steps=8,
            warmup_steps=5,
            max_steps=CPU_STEPS or 60,
            learning_rate=2e-4,
            fp16=not is_bfloat16_supported(),
            bf16=is_bfloat16_supported(),
            logging_steps=1,
            optim="adamw_8bit",
            weight_decay=0.01,
            lr_scheduler_type="linear",
            seed=213,
            output_dir="outputs",
            report_to="none",
        ),
    )
    trainer_stats = trainer.train()
    assert trainer_stats.global_step == (CPU_STEPS or 60)
    # 3.6
    FastLanguageModel.for_inference(model)
    inputs = tokenizer([alpaca_prompt.format("你是谁？", "", "")], return_tensors="pt").to(model.device)  # "cuda"
    outputs = model.generate(**inputs, max_new_tokens=64, use_cache=True)
    response = tokenizer.batch_decode(outputs)
    assert "### Response:" in response[0]
    # 4.1
    gc.collect()
    torch.cuda.empty_cache()
    # 4.2
    quantization_method = "q4_k_m"
    gguf = model.save_pretrained_gguf("outputs/AlgiebaLLM-Qwen3-4B", tokenizer, quantization_method=quantization_method)
    # 4.3
    merged = model.save_pretrained_merged("outputs/AlgiebaLLM-Qwen3-4B-16bit", tokenizer, save_method="merged_16bit")

    assert any(f.endswith(".gguf") for f in gguf.files) and "Modelfile" in gguf.files
    assert gguf.checks["original_model"] == merged.checks["original_model"] == "Qwen/Qwen3-4B-Instruct-2507"
    assert merged.checks["max_logit_diff_fp32"] < 1e-3


def test_russian_q4_offload(models, tmp_path, monkeypatch, capsys):
    """unsloth-q4-offload-ru.txt, steps 3 to 5 and saving: the offload arguments that no library has are refused
    with what to write; done that way, the cells train, save and reload the adapter. The 30B-on-8 GB claim is the
    planner's to answer (test_thirty_b_on_eight_gb_is_planned)."""
    monkeypatch.chdir(tmp_path)
    import torch
    from transformers import TrainingArguments

    from tunesmith import FastLanguageModel

    load = dict(
        model_name=models["Qwen/Qwen3-32B-Instruct"],
        max_seq_length=2048,
        dtype=torch.float16,
        load_in_4bit=True,
        offload_folder="./offload",
        offload_enabled=True,
        device_map="auto",
        use_gradient_checkpointing=True,
    )
    with pytest.raises(UserError, match="offload_folder='./offload' is not supported; drop it"):
        FastLanguageModel.from_pretrained(**load)
    del load["offload_folder"]
    with pytest.raises(UserError, match="no library has offload_enabled; drop it"):
        FastLanguageModel.from_pretrained(**load)
    del load["offload_enabled"]
    model, tokenizer = FastLanguageModel.from_pretrained(**load)
    assert "plan (no GPU budget)" in capsys.readouterr().out

    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_alpha=16,
        lora_dropout=0,
        bias="none",
        use_gradient_checkpointing=True,
        random_state=3407,
        max_seq_length=2048,
    )
    # step 4
    args = dict(
        output_dir="./results",
        num_train_epochs=3,
        per_device_train_batch_size=1,
        per_device_eval_batch_size=1,
        gradient_accumulation_steps=8,
        warmup_steps=50,
        logging_steps=10,
        save_steps=500,
        eval_steps=500,
        save_total_limit=2,
        learning_rate=2e-4,
        fp16=True,
        gradient_checkpointing=True,
        optim="paged_adamw_8bit",
        lr_scheduler_type="cosine",
        report_to="none",
        ddp_find_unused_parameters=False,
        remove_unused_columns=False,
        max_grad_norm=0.3,
        offload_params_to_cpu=False,
        offload_activations=False,
        torch_compile=False,
        dataloader_pin_memory=False,
        dataloader_num_workers=0,
    )
    with pytest.raises(UserError, match="'offload_params_to_cpu' is not an argument of any .*; drop it"):
        TrainingArguments(**args)
    del args["offload_params_to_cpu"]
    with pytest.raises(UserError, match="'offload_activations' is not an argument of any .*; drop it"):
        TrainingArguments(**args)
    del args["offload_activations"]
    training_args = TrainingArguments(**args)
    # step 5
    import pandas as pd
    from datasets import Dataset

    data = [
        {
            "instruction": "Напиши email клиенту об отсрочке платежа",
            "input": "Клиент Иван Петров, сумма 50000 руб, отсрочка 14 дней",
            "output": "Уважаемый Иван Петров...",
        },
    ]
    dataset = Dataset.from_pandas(pd.DataFrame(data))

    def tokenize_function(examples):
        texts = []
        for i in range(len(examples["instruction"])):
            message = [
                {"role": "user", "content": examples["instruction"][i] + "\n" + examples["input"][i]},
                {"role": "assistant", "content": examples["output"][i]},
            ]
            text = tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=False)
            texts.append(text)
        tokenized = tokenizer(texts, truncation=True, padding="max_length", max_length=2048)
        tokenized["labels"] = tokenized["input_ids"].copy()
        return tokenized

    tokenized_dataset = dataset.map(tokenize_function, batched=True)

    from trl import SFTTrainer

    from tunesmith import is_bfloat16_supported

    if is_bfloat16_supported():
        training_args.bf16 = True
        training_args.fp16 = False

    def print_memory_usage():
        print(f"VRAM used: {torch.cuda.memory_allocated() / 1e9:.2f} GB")
        print(f"VRAM reserved: {torch.cuda.memory_reserved() / 1e9:.2f} GB")
        print(f"VRAM max allocated: {torch.cuda.max_memory_allocated() / 1e9:.2f} GB")
        if hasattr(torch.cuda, "memory_stats"):
            stats = torch.cuda.memory_stats()
            print(f"Active allocations: {stats.get('num_alloc_retries', 0)}")

    from transformers import TrainerCallback

    class MemoryCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            print_memory_usage()

    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        args=training_args,
        train_dataset=tokenized_dataset,
        dataset_text_field="text",
        max_seq_length=2048,
        packing=False,
        callbacks=[MemoryCallback()],  # the monitoring section's addition
    )
    assert trainer.train().global_step == 3
    # saving and loading
    model.save_pretrained("./my_finetuned_model")
    tokenizer.save_pretrained("./my_finetuned_model")
    with open("./my_finetuned_model/quantization_config.json", "w") as f:
        json.dump({"bits": 4, "offload_enabled": True, "offload_folder": "./offload"}, f)
    reload = dict(
        model_name="./my_finetuned_model",
        max_seq_length=2048,
        dtype=torch.float16,
        load_in_4bit=True,
        offload_folder="./offload",
        offload_enabled=True,
        device_map="auto",
    )
    with pytest.raises(UserError, match="offload_folder='./offload' is not supported; drop it"):
        FastLanguageModel.from_pretrained(**reload)
    del reload["offload_folder"], reload["offload_enabled"]
    model, tokenizer = FastLanguageModel.from_pretrained(**reload)
    assert model.peft_config["default"].r == 16


def test_thirty_b_on_eight_gb_is_planned():
    """The Russian guide's claim, 4-bit Qwen3-32B on an 8 GB card at max_seq_length=2048 with 32 GB of RAM, asked of
    the planner the notebook API uses: with the guide's 32 GB it is refused with the reason and figures (host RAM must
    hold the 16-bit checkpoint while it loads and the streamed layers); with 128 GB it streams layers within 8 GB."""
    from engine.memory import verdict
    from engine.memory.estimate import Arch
    from engine.spec.jobspec import JobSpec

    qwen3_32b = dict(model_type="qwen3", hidden_size=5120, intermediate_size=25600, num_hidden_layers=64,
                     num_attention_heads=64, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                     tie_word_embeddings=False)  # fmt: skip
    spec = JobSpec(model="Qwen/Qwen3-32B", data="-", method="qlora", max_seq_length=2048, batch_size=1)
    with pytest.raises(UserError, match=r"needs about \d+\.\d GiB of host RAM .*8\.0 GiB of GPU memory.*32\.0 GiB"):
        verdict.plan_for(Arch.from_config(qwen3_32b), spec, 8.0, 32.0)
    plan = verdict.plan_for(Arch.from_config(qwen3_32b), spec, 8.0, 128.0)
    assert plan.streamed and plan.peak_vram_gib <= 8.0, plan.describe()


def test_rlhf_dpo(models, tmp_path, monkeypatch):
    """unsloth-rlhf-zh.txt: a pre-quantized 4-bit Llama, LoRA, and the DPO cell with DPOTrainer(tokenizer=) and
    DPOConfig(warmup_ratio=, max_prompt_length=)."""
    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": f"Question {i}?", "chosen": "A kind, clear answer.", "rejected": "No."} for i in range(4)]
    (tmp_path / "your_rlhf_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    import torch  # noqa: F401 (the guide's import)

    from tunesmith import FastLanguageModel

    max_seq_length = 2048
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=models["unsloth/Llama-4-8B-bnb-4bit"],
        max_seq_length=max_seq_length,
        load_in_4bit=True,
        full_finetuning=False,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_alpha=16,
        lora_dropout=0,
        use_gradient_checkpointing="unsloth",
        random_state=3407,
        max_seq_length=max_seq_length,
    )
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    dataset = load_dataset("json", data_files={"train": "your_rlhf_data.jsonl"}, split="train")
    dpo_trainer = DPOTrainer(
        model=model,
        ref_model=None,
        train_dataset=dataset,
        tokenizer=tokenizer,
        args=DPOConfig(
            per_device_train_batch_size=2,
            gradient_accumulation_steps=4,
            warmup_ratio=0.1,
            num_train_epochs=3,
            logging_steps=1,
            optim="adamw_8bit",
            seed=42,
            output_dir="outputs",
            max_length=1024,
            max_prompt_length=512,
            beta=0.1,
        ),
    )
    assert dpo_trainer.train().global_step == 3
    model.save_pretrained("lora_model")  # the checklist's export step
    assert (tmp_path / "lora_model" / "adapter_model.safetensors").is_file()


def test_full_finetune(models, tmp_path, monkeypatch):
    """unsloth-full-finetune-zh.txt, section 6's 1.py: full fine-tuning of a Llama in bf16 with SFTConfig's older
    max_seq_length and a chat template from another tokenizer."""
    monkeypatch.chdir(tmp_path)
    rows = [
        {"id": str(i), "source": "tiny", "messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant",
                                                                                        "content": "Hello!"}]}
        for i in range(4)
    ]  # fmt: skip
    (tmp_path / "tulu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    import multiprocessing

    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    from tunesmith import FastLanguageModel

    set_seed(42)
    model_name = models["meta-llama/Llama-3.1-8B"]
    tokenizer_name_chat_template = models["allenai/Llama-3.1-Tulu-3-8B"]
    compute_dtype = torch.bfloat16
    bs = 2
    gas = 64
    mseqlen = 4096
    lr = 5e-6
    output_dir = "./SFT/"
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_name, fix_tokenizer=False, max_seq_length=mseqlen, dtype=compute_dtype, full_finetuning=True
    )
    ds_train = load_dataset("json", data_files="tulu.jsonl", split="train")  # allenai/tulu-3-sft-mixture
    tokenizer_chat = AutoTokenizer.from_pretrained(tokenizer_name_chat_template)

    def process(row):
        row["text"] = tokenizer_chat.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=False)
        return row

    ds_train = ds_train.map(process, num_proc=multiprocessing.cpu_count(), load_from_cache_file=False)
    ds_train = ds_train.remove_columns(["messages"])
    training_arguments = SFTConfig(
        output_dir=output_dir,
        optim="paged_adamw_8bit",
        per_device_train_batch_size=bs,
        gradient_accumulation_steps=gas,
        log_level="debug",
        save_strategy="steps",
        save_steps=10000,
        logging_steps=25,
        learning_rate=lr,
        bf16=True,
        num_train_epochs=2,
        warmup_ratio=0.03,
        report_to="none",
        lr_scheduler_type="linear",
        max_seq_length=mseqlen,
        dataset_text_field="text",
        dataset_num_proc=multiprocessing.cpu_count(),
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTTrainer(model=model, train_dataset=ds_train, processing_class=tokenizer, args=training_arguments)
    trainer_ = trainer.train()
    assert trainer_.global_step == 2 and training_arguments.max_length == mseqlen
    assert all(p.requires_grad for p in model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_memory_quick_start(models, tmp_path, monkeypatch, capsys):
    """unsloth-memory-zh.txt, 2.3's quick_finetune.py (model_name_or_path, which no library takes, refused with what
    to write) and 5.1's memory log."""
    monkeypatch.chdir(tmp_path)
    rows = [{"instruction": "Say hi.", "response": "Hi!"}, {"instruction": "Count to three.", "response": "1 2 3"}]
    (tmp_path / "sample_data.json").write_text(json.dumps(rows))

    from datasets import load_dataset
    from transformers import TrainingArguments
    from trl import SFTTrainer

    from tunesmith import FastLanguageModel, is_bfloat16_supported

    load = dict(
        model_name_or_path=models["unsloth/llama-3-8b-bnb-4bit"], max_seq_length=2048, dtype=None, load_in_4bit=True
    )
    with pytest.raises(UserError, match="write model_name="):
        FastLanguageModel.from_pretrained(**load)
    load["model_name"] = load.pop("model_name_or_path")
    model, tokenizer = FastLanguageModel.from_pretrained(**load)
    model = FastLanguageModel.get_peft_model(
        model,
        r=64,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_alpha=128,
        lora_dropout=0,
        bias="none",
        use_gradient_checkpointing="unsloth",
    )
    alpaca_prompt = """Below is an instruction that describes a task. Write a response that appropriately completes the request.
### Instruction:
{}
### Response:
{}"""  # noqa: E501 (the guide's prompt, as written)
    EOS_TOKEN = tokenizer.eos_token

    def formatting_prompts_func(examples):
        instructions = examples["instruction"]
        responses = examples["response"]
        texts = [alpaca_prompt.format(instruction, response) + EOS_TOKEN for instruction, response in
                 zip(instructions, responses)]  # fmt: skip  # noqa: B905 (as the guide has it)
        return {"text": texts}

    dataset = load_dataset("json", data_files={"train": "sample_data.json"}, split="train")
    dataset = dataset.map(formatting_prompts_func, batched=True)

    def log_gpu_memory(step):
        if torch.cuda.is_available():
            allocated = torch.cuda.memory_allocated() / 1024**3
            reserved = torch.cuda.memory_reserved() / 1024**3
            print(f"[Step {step}] GPU Mem: {allocated:.2f}GB (alloc) / {reserved:.2f}GB (res)")
        else:
            print(f"[Step {step}] CPU only")

    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=dataset,
        dataset_text_field="text",
        max_seq_length=2048,
        packing=True,
        args=TrainingArguments(
            per_device_train_batch_size=2,
            gradient_accumulation_steps=4,
            warmup_steps=5,
            max_steps=CPU_STEPS or 20,
            learning_rate=2e-4,
            fp16=not is_bfloat16_supported(),
            bf16=is_bfloat16_supported(),
            logging_steps=1,
            output_dir="outputs",
            optim="adamw_8bit",
        ),
    )
    log_gpu_memory(0)
    assert trainer.train().global_step == (CPU_STEPS or 20)
    assert "[Step 0] CPU only" in capsys.readouterr().out or torch.cuda.is_available()
