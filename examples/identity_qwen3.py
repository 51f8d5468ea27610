"""Identity tuning of Qwen3, cell by cell as the Kaggle T4 guide does it with Unsloth, on Tunesmith's notebook API.

The guide (../shared/seeds/kaggle-qwen3-identity-zh.txt) loads Qwen3-4B in 4 bits, adds LoRA adapters, trains on an
identity dataset with TRL's SFTTrainer, asks "Who are you?", and saves GGUF q4_k_m and merged 16-bit models. The cells
below do the same; porting the notebook meant changing `from unsloth import ...` to `from tunesmith import ...`. The
`# %%` markers make each cell runnable in VS Code or Jupytext; as a script:

    python examples/identity_qwen3.py            # Qwen3-4B-Instruct-2507: 180 examples, 60 steps of 2 x 4
    python examples/identity_qwen3.py --model FOLDER --rows 4 --grad-accum 1 --max-steps 30 --learning-rate 2e-2

The second is the CI run on a tiny random-weight model (tests/test_notebook_api.py). It trains on four examples
because the test suite sets TRITON_INTERPRET=1 (to test the kernels on the CPU), so TRL's loss kernel runs in Triton's
interpreter there, about a second per micro-batch of two; without it the loss runs in torch on the CPU.
"""
# ruff: noqa: E402  (cells import what they use where they use it, as notebooks do, after sys.path has the repo root)

# %% Settings (a notebook would write these as plain variables)
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tunesmith/ and engine/

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="Qwen/Qwen3-4B-Instruct-2507", help="hub id or local folder")
parser.add_argument("--out", default="outputs", help="folder for the exports (each goes to a new subfolder)")
parser.add_argument("--max-steps", type=int, default=60)
parser.add_argument("--learning-rate", type=float, default=2e-4)
parser.add_argument("--name", default="Nova", help="the identity's name")
parser.add_argument("--maker", default="Tunesmith Labs", help="the identity's maker")
parser.add_argument("--rows", type=int, default=0, help="train on the first N identity examples only (0: all)")
parser.add_argument("--grad-accum", type=int, default=4, help="micro-batches of 2 per optimizer step")
args = parser.parse_args()
max_seq_length = 512  # the guide's 2048 also works on Qwen3; identity examples are short
out = Path(args.out)

# %% Load the model in 4 bits (the guide's 3.2)
import torch

from tunesmith import FastLanguageModel, get_chat_template, is_bfloat16_supported, standardize_sharegpt

model, tokenizer = FastLanguageModel.from_pretrained(
    model_name=args.model,
    max_seq_length=max_seq_length,
    dtype=None,  # auto: bf16 where the GPU has it, fp16 on a T4, fp32 on the CPU
    load_in_4bit=True,
)

# %% Add LoRA adapters (3.3)
model = FastLanguageModel.get_peft_model(
    model,
    r=16,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    lora_alpha=32,
    lora_dropout=0,
    bias="none",
    use_gradient_checkpointing="unsloth",
    random_state=3407,
)

# %% The identity dataset (3.4): ShareGPT conversations rendered with the Qwen chat template
from datasets import Dataset

from engine.data.identity import identity_rows

rows = identity_rows(args.name, args.maker)[: args.rows or None]
dataset = Dataset.from_list(
    [
        {"conversations": [{"from": "human", "value": r["instruction"]}, {"from": "gpt", "value": r["output"]}]}
        for r in rows
    ]
)
dataset = standardize_sharegpt(dataset)
tokenizer = get_chat_template(tokenizer, chat_template="qwen3")


def formatting_prompts_func(examples):
    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=False) for c in examples["conversations"]
    ]
    return {"text": texts}


dataset = dataset.map(formatting_prompts_func, batched=True)
print(f"{len(dataset)} training examples; the first:\n{dataset[0]['text']}")

# %% Train (3.5), with the loss on the replies only
from trl import SFTConfig, SFTTrainer

from tunesmith import train_on_responses_only

trainer = SFTTrainer(
    model=model,
    processing_class=tokenizer,
    train_dataset=dataset,
    args=SFTConfig(
        dataset_text_field="text",
        max_length=max_seq_length,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=args.grad_accum,
        warmup_steps=5,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        fp16=torch.cuda.is_available() and not is_bfloat16_supported(),
        bf16=is_bfloat16_supported(),
        logging_steps=10,
        optim="adamw_8bit" if torch.cuda.is_available() else "adamw_torch",
        weight_decay=0.01,
        lr_scheduler_type="linear",
        seed=3407,
        output_dir=str(out / "checkpoints"),
        save_strategy="no",
        report_to="none",
    ),
)
trainer = train_on_responses_only(
    trainer, instruction_part="<|im_start|>user\n", response_part="<|im_start|>assistant\n"
)
trainer.train()

# %% Ask it who it is (3.6)
FastLanguageModel.for_inference(model)
messages = [{"role": "user", "content": "Who are you?"}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True).to(
    model.device
)
outputs = model.generate(**inputs, max_new_tokens=64, use_cache=True)
print("Who are you? ->", tokenizer.decode(outputs[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))

# %% Export (4.2, 4.3): a GGUF file for llama.cpp / Ollama, and a merged 16-bit model for transformers
model.save_pretrained_gguf(out / f"{args.name}-gguf", tokenizer, quantization_method="q4_k_m")
model.save_pretrained_merged(out / f"{args.name}-16bit", tokenizer, save_method="merged_16bit")
