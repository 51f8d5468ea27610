"""Tunesmith's notebook API: the calls of Unsloth notebooks, on Tunesmith's engine.

Porting a notebook means changing its imports:

    from tunesmith import FastLanguageModel, get_chat_template, standardize_sharegpt, train_on_responses_only

    model, tokenizer = FastLanguageModel.from_pretrained("Qwen/Qwen3-4B-Instruct-2507", max_seq_length=2048,
                                                         load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, use_gradient_checkpointing="unsloth")
    # ... trl.SFTTrainer(model=model, processing_class=tokenizer, train_dataset=..., args=SFTConfig(...)).train()
    FastLanguageModel.for_inference(model)
    model.save_pretrained_merged("out-16bit", tokenizer, save_method="merged_16bit")
    model.save_pretrained_gguf("out-gguf", tokenizer, quantization_method="q4_k_m")

Importing tunesmith also lets the older TRL / transformers spellings those notebooks use (SFTTrainer(tokenizer=...,
max_seq_length=...), TrainingArguments(warmup_ratio=...), ...) run on the installed versions: tunesmith.compat
translates each, with a log line.

An option Tunesmith cannot honour raises engine.core.errors.UserError with what to do instead; none is silently ignored.
"""

from engine.core.errors import UserError
from tunesmith import compat
from tunesmith.chat_templates import (
    get_chat_template,
    standardize_data_formats,
    standardize_sharegpt,
    train_on_responses_only,
)
from tunesmith.compat import PatchDPOTrainer, PatchFastRL, PatchKTOTrainer
from tunesmith.fast_generate import SamplingParams
from tunesmith.fast_model import FastModel
from tunesmith.model import FastLanguageModel, is_bfloat16_supported
from tunesmith.trainer import UnslothTrainer, UnslothTrainingArguments, unsloth_train

compat.install()

__all__ = [
    "FastLanguageModel",
    "FastModel",
    "PatchDPOTrainer",
    "PatchFastRL",
    "PatchKTOTrainer",
    "SamplingParams",
    "UnslothTrainer",
    "UnslothTrainingArguments",
    "UserError",
    "get_chat_template",
    "is_bfloat16_supported",
    "standardize_data_formats",
    "standardize_sharegpt",
    "train_on_responses_only",
    "unsloth_train",
]
