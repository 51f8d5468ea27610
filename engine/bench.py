"""The shared benchmark's entry points (contract in shared/bench/README.md), on the same code path as the app.

`training_model` builds the model exactly as a training run does (engine.models.loading.load_for_training with a
JobSpec), so the yardstick measures what users get.
"""

import os


def training_model(path: str, mode: str, max_seq_length: int, rank: int, target_modules: list[str]):
    """Load `path` as the app trains it (mode "qlora": 4-bit NF4 base; "lora": 16-bit base), LoRA of `rank`
    (alpha = rank, no dropout) on `target_modules`; calling it with input_ids and labels returns `.loss`."""
    from engine.core.hardware import choose_placement
    from engine.models.loading import load_for_training
    from engine.spec.jobspec import JobSpec

    spec = JobSpec(
        model=path,
        data="-",
        method=mode,
        max_seq_length=max_seq_length,
        lora_r=rank,
        lora_alpha=rank,
        target_modules=tuple(target_modules),
        gradient_checkpointing=True,
        batch_size=int(os.environ.get("TUNESMITH_BENCH_BATCH", "1")),
    )
    # The fast path (engine.patching), the offload plan (engine.memory.offload) and the checkpointing policy apply as in
    # a run, from the budget (TUNESMITH_VRAM_GIB or the card). The contract does not say the harness's micro-batch, so
    # the load-time choices (weight streaming, activation offload, host embedding, graphs) are planned for
    # TUNESMITH_BENCH_BATCH sequences (bench/budget_sweep.py sets it to the harness's --bs; default one) and the
    # checkpointing policy re-plans for each micro-batch's real token count with those choices.
    model, _ = load_for_training(spec, choose_placement("cuda"), log=lambda m: print(f"# {m}", flush=True))
    return model


def chat_generator(path: str):
    """generate(input_ids (1, T), max_new_tokens) -> (1, T + max_new_tokens), greedy, as the Chat tab decodes.

    The Chat tab's own decoder (engine.chat.decode: static KV cache, CUDA-graph decode step), with no stop token, so it
    always makes exactly max_new_tokens tokens. The first call captures the graph.
    """
    from engine.chat.infer import ChatModel

    chat = ChatModel(path, device="cuda", log=lambda m: print(f"# {m}", flush=True))
    return chat.decoder.generate
