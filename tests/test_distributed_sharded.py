"""Full fine-tuning sharded by FSDP2 over two gloo processes on the CPU, as over two GPUs: each rank's memory plan is
its GPU's with the shards counted (what `python -m engine estimate --gpus N` shows), rank 0 alone loads the weights
(the others build the model empty and receive their shards), and fp16's loss scaler skips a step on every rank when
one rank's gradients overflow, its shards fp32 master weights computing in fp16."""

import json
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import log_of, tiny_spec, wait_for
from safetensors.torch import load_file

from engine import api
from engine.core.hardware import Placement
from engine.memory.checkpointing import SLACK
from engine.memory.estimate import GIB, estimate
from engine.memory.verdict import estimate_kw, plan_for


def test_a_sharded_rank_recomputes_the_layers_its_gpus_plan_says(tiny_llama, identity_file, monkeypatch):
    """A rank of a full fine-tune on two GPUs loads the model into host RAM (here the CPU) and plans for its GPU
    (TUNESMITH_VRAM_GIB stands in for the card): in a micro-batch of the planned size, it recomputes the layers the
    estimate's plan for two GPUs says (engine.memory.verdict.plan_for). None where the budget holds every layer's
    activations beside the shards, all where it holds them only recomputed."""
    from engine.api.models import model_arch
    from engine.models.loading import load_for_training

    two = tiny_spec(tiny_llama, identity_file, method="full", gpus=2, batch_size=64, max_seq_length=256)
    # plain transformers: 16384 tokens through the fast path's kernels would take minutes in Triton's interpreter (the
    # sharded fast path's plan and run: tests/test_distributed_fast_path.py)
    two = two.replace(gradient_checkpointing=True, fast_path=False)
    arch = model_arch(str(tiny_llama))
    kw = estimate_kw(two)
    assert kw["shards"] == 2
    peaks = {k: estimate(arch, "full", 256, 64, checkpointed_layers=k, **kw).peak_vram_gib for k in (0, arch.layers)}
    for recomputed in (0, arch.layers):
        budget = round(peaks[recomputed] * SLACK + 0.01, 3)
        assert not recomputed or budget < peaks[0] * SLACK  # the budget of all recomputed cannot hold none recomputed
        shown = plan_for(arch, two, budget, 64, on_gpu=True)  # what `estimate --gpus 2` computes, for this job
        assert shown.checkpointed == recomputed and not shown.fused_loss
        assert not shown.offload_activations  # FSDP2's checkpointed inputs stay on the GPU
        monkeypatch.setenv("TUNESMITH_VRAM_GIB", str(budget))
        lines = []
        on_gpu = Placement("cuda:0", "fp32", "test")
        model, _ = load_for_training(two, Placement("cpu", "fp32", "test"), lines.append, compute=on_gpu)
        model.train()
        ids = torch.randint(0, arch.vocab, (64, 256))
        model(input_ids=ids, labels=ids)
        layers = model.model.layers
        assert sum(layer.gradient_checkpointing for layer in layers) == recomputed
        assert f"checkpointing: {recomputed} of {arch.layers} layers recompute at 16384 tokens" in "\n".join(lines)
        assert f"({budget:.1f} GiB budget)" in "\n".join(lines)


def test_the_estimates_host_ram_holds_the_checkpoint_once_and_each_ranks_own():
    """A run on two GPUs needs the 16-bit checkpoint once in host RAM (a sharded run's rank 0 loads it; LoRA's ranks
    map the same files) and each rank's own gigabyte and pinned buffers."""
    from engine.api.models import model_arch

    arch = model_arch("Qwen/Qwen3-4B")
    for method, vram in (("full", 80), ("qlora", 80), ("qlora", 10)):
        one, two = (api.estimate("Qwen/Qwen3-4B", method, 4096, 1, vram_gib=vram, ram_gib=256, gpus=n) for n in (1, 2))
        per_rank = one["peak_ram_gib"] - arch.params * 2 / GIB  # 1 GiB and this plan's pinned buffers
        assert two["peak_ram_gib"] == pytest.approx(one["peak_ram_gib"] + per_rank, abs=0.02), method
    assert two["plan"]["activation_offload"]  # the 10 GiB QLoRA plan pins each rank's checkpointed inputs


def test_fp16_full_fine_tuning_plans_fp32_shards_on_kaggles_two_t4s():
    """On two T4s (fp16) the shards are fp32 master weights: 4 bytes a parameter over two GPUs, beside two fp16
    layers and the fp16 embeddings gathered; rank 0 loads them in fp32."""
    from engine.api.models import model_arch
    from engine.memory.estimate import layer_weight_bytes

    arch = model_arch("Qwen/Qwen3-0.6B")
    e = api.estimate("Qwen/Qwen3-0.6B", "full", 1024, 1, ram_gib=32, machine="kaggle-2xt4")
    assert (e["dtype"], e["gpus"], e["fits"], e["plan"]["fp32_master_weights"]) == ("fp16", 2, True, True)
    weights = (arch.params * 4 / 2 + 2 * layer_weight_bytes(arch, "full") + arch.embedding_params * 2) / GIB
    assert e["peak_parts_gib"]["weights"] == pytest.approx(weights, abs=0.01)
    assert e["peak_ram_gib"] == pytest.approx(2 + arch.params * 4 / GIB, abs=0.01)
    bf16 = api.estimate("Qwen/Qwen3-0.6B", "full", 1024, 1, vram_gib=14.6, ram_gib=32, gpus=2)
    assert not bf16["plan"]["fp32_master_weights"] and bf16["peak_vram_gib"] < e["peak_vram_gib"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sharded_rank(rank: int, folder: str, data: str, port: int, out: str) -> None:
    """One of two gloo ranks: load and shard the tiny model as a full fine-tune in fp16 does (fp32 shards, layers
    computing in fp16), then take scaled steps until one has finite gradients, and one in which rank 1's shard of a
    gradient holds an inf; write what it saw to `out`."""
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    from engine.models.loading import load_for_training
    from engine.training import distributed
    from engine.training.steps import make_optimizer

    spec = tiny_spec(folder, data, method="full", gpus=2, dtype="fp16", learning_rate=1e-3)
    placement = Placement("cpu", "fp16", "test")
    world = distributed.join(spec, placement, print)
    try:
        model, _ = load_for_training(spec, distributed.load_placement(placement, world), print)
        seen = dict(built_empty=all(p.is_meta for p in model.parameters()))
        model = distributed.shard(model, world, placement, print)
        whole = distributed.full_states(model)["model_state"]  # rank 0's: every rank's shard gathered
        if world.main:
            stored = load_file(next(Path(folder).glob("*.safetensors")))
            seen["weights_as_stored"] = all(torch.equal(whole[k], v.float()) for k, v in stored.items())
        outputs = []
        model.model.layers[0].mlp.register_forward_hook(lambda m, args, out: outputs.append(str(out.dtype)))
        scaler = distributed.grad_scaler(placement, world)
        opt = make_optimizer(spec, list(model.parameters()), placement.device, print, fused=False)  # as the run's
        seen.update(scaler=type(scaler).__name__, steps=[])
        # the first scales (from 2**16) overflow even the tiny model's fp16 gradients: those steps are skipped, then
        # one with finite gradients is taken; then rank 1's shard of a gradient gets an inf
        while len(seen["steps"]) < 20 and not (seen["steps"] and seen["steps"][-1]["stepped"]):
            seen["steps"].append(scaled_step(model, opt, scaler, rank, overflow=False))
        seen["steps"].append(scaled_step(model, opt, scaler, rank, overflow=True))
        seen["computed_in"] = sorted(set(outputs))
        torch.distributed.barrier()  # both ranks done before either tears the group down
    finally:
        distributed.leave()
    with open(f"{out}/rank-{rank}.json", "w") as f:
        json.dump(seen, f)


def scaled_step(model, opt, scaler, rank: int, overflow: bool) -> dict:
    """One loss-scaled step of a sharded model; with `overflow`, rank 1 puts an inf into its shard of a gradient.
    Returns whether this rank's weights changed, and the scale before and after."""
    ids = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(rank))
    scaler.scale(model(input_ids=ids, labels=ids).loss).backward()
    grad = next(p.grad for p in model.parameters() if p.grad is not None)
    assert type(grad).__name__ == "DTensor" and grad.dtype == torch.float32  # fp32 shards' gradients
    if overflow and rank == 1:
        grad.to_local().view(-1)[0] = math.inf
    before = [p.detach().to_local().clone() for p in model.parameters()]
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    stepped = any(not torch.equal(b, p.detach().to_local()) for b, p in zip(before, model.parameters(), strict=True))
    return dict(stepped=stepped, scale=scale, next_scale=scaler.get_scale())


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen3"])  # qwen3 ties its head to the embedding
def test_rank_0_alone_loads_and_fp16s_scaler_skips_a_step_on_every_rank(arch, identity_file, tmp_path, request):
    folder = request.getfixturevalue(arch)
    mp.spawn(sharded_rank, (str(folder), str(identity_file), free_port(), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["built_empty"] for r in ranks] == [False, True]  # rank 1 never held the weights
    assert ranks[0]["weights_as_stored"]  # yet every shard gathered back is the stored weight
    assert ranks[0]["steps"] == ranks[1]["steps"]  # every rank took and skipped the same steps at the same scales
    *first, taken, overflowed = ranks[0]["steps"]
    assert all(not s["stepped"] and s["next_scale"] == s["scale"] / 2 for s in first)  # real overflows, all agreed
    assert taken["stepped"] and taken["next_scale"] == taken["scale"]
    # rank 1's inf reached rank 0's check: both skipped the step and halved the scale
    assert not overflowed["stepped"] and overflowed["next_scale"] == overflowed["scale"] / 2
    assert ranks[0]["scaler"] == "ShardedGradScaler"
    assert ranks[0]["computed_in"] == ranks[1]["computed_in"] == ["torch.float16"]


TWO_GPUS = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=TWO_GPUS)])
def test_two_processes_fine_tune_in_fp16_sharded(device, tiny_llama, identity_file, runs):
    """A full fine-tune in fp16 on two processes (on two GPUs as on Kaggle's two T4s: NCCL, the unfused AdamW the
    sharded scaler needs, each rank's layers recomputed as its GPU's plan says) trains through the scaler: finite
    losses, weights that moved and stayed finite (fp32 master weights: AdamW on fp16 weights makes NaN of a zero
    gradient)."""
    spec = tiny_spec(tiny_llama, identity_file, method="full", gpus=2, dtype="fp16", max_steps=6, learning_rate=1e-3)
    st = wait_for(api.start(spec.replace(device=device, gradient_checkpointing=device == "cuda")))
    assert st.state == "done", log_of(st)
    text = log_of(st)
    assert "sharded over 2 ranks from rank 0's weights; fp32 shards, computing in fp16" in text
    assert "fp32 weight shards and gradients, computing in fp16; expected peak" in text  # the plan counts them
    if device == "cuda":  # a tiny model on a big GPU: nothing recomputed, as the plan for that GPU says
        assert "over nccl" in text and "checkpointing: 0 of 2 layers recompute" in text, text
    losses = [m["loss"] for m in st.metrics]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    trained = load_file(next((st.run_dir / "model").glob("*.safetensors")))
    stored = load_file(next(tiny_llama.glob("*.safetensors")))
    assert all(trained[k].dtype == torch.float32 and trained[k].isfinite().all() for k in stored)
    assert any(not torch.equal(trained[k], v.float()) for k, v in stored.items())


def test_a_sharded_run_that_does_not_fit_says_what_to_do_in_each_language():
    """Full fine-tuning of a 4B model on two 24 GiB GPUs does not fit even with every layer recomputed (nothing goes to
    host RAM under FSDP2): the sentence says the smallest budget per GPU, then first that one such GPU fits it (host
    offload, paged 8-bit states) with that plan's figures, then the other fixes; the page shows it in its language.
    Where one GPU does not fit either (16 GiB), or has too little RAM for its offload, the sentence says nothing of it
    and its fixes begin with LoRA, which every machine can do: more GPUs, which this one may not have, come last
    (before, "use more GPUs" led the sentence, and one GPU came after it)."""
    from ui import i18n

    one = api.estimate("Qwen/Qwen3-4B", "full", 4096, 1, vram_gib=24, ram_gib=256, gpus=1)
    e = api.estimate("Qwen/Qwen3-4B", "full", 4096, 1, vram_gib=24, ram_gib=256, gpus=2)
    assert one["fits"] and not e["fits"] and e["min_vram_gib"] > 24
    refusal = (
        f"Full fine-tuning of this model needs at least {e['min_vram_gib']:.1f} GiB on each GPU even with every layer "
        "recomputed, over the 24.0 GiB budget"
    )
    assert e["reason"] == (
        f"{refusal}. One GPU fits it (set gpus to 1): {one['peak_vram_gib']:.1f} GiB of GPU memory and "
        f"{one['peak_ram_gib']:.0f} GiB of host RAM, since a one-GPU run may keep activations and optimizer states in "
        "host RAM and a sharded one does not. Otherwise use LoRA or QLoRA, a shorter sequence length, or more GPUs."
    )
    for lang, word, again in (("zh", "全量微调", "单块 GPU 即可容纳"), ("ru", "Полному дообучению", "На одной GPU")):
        said = i18n.message(e["reason"], lang)
        assert said.startswith(("即使", word)) and word in said and f"{e['min_vram_gib']:.1f}" in said
        assert again in said and f"{one['peak_vram_gib']:.1f}" in said and "One GPU" not in said
        assert said.index(again) < said.index("LoRA") and "Otherwise" not in said  # one GPU first, then the rest
    for vram, ram in ((16, 256), (24, one["peak_ram_gib"] - 1)):
        alone = api.estimate("Qwen/Qwen3-4B", "full", 4096, 1, vram_gib=vram, ram_gib=ram, gpus=1)
        e = api.estimate("Qwen/Qwen3-4B", "full", 4096, 1, vram_gib=vram, ram_gib=ram, gpus=2)
        assert not alone["fits"] and e["reason"].endswith(
            f"over the {vram:.1f} GiB budget; use LoRA or QLoRA, a shorter sequence length, or more GPUs."
        )
        for lang, first in (
            ("zh", "请改用 LoRA 或 QLoRA、缩短序列长度，或使用更多 GPU"),
            ("ru", "используйте LoRA или QLoRA"),
        ):
            said = i18n.message(e["reason"], lang)
            assert first in said and "use LoRA" not in said


def test_the_runs_own_plan_refuses_sharding_naming_one_gpu():
    """The run's plan (plan_for, as engine.models.loading.plan_memory asks it) refuses the sharded run with the same
    sentence, and its figure is the smallest budget per GPU a sharded plan exists for."""
    from engine.api.models import model_arch
    from engine.core.errors import BudgetTooSmall

    arch = model_arch("Qwen/Qwen3-4B")
    spec = api.JobSpec(model="m", data="-", method="full", max_seq_length=4096, batch_size=1, gpus=2)
    with pytest.raises(BudgetTooSmall, match=r"budget\. One GPU fits it \(set gpus to 1\): 18\.3 GiB") as refused:
        plan_for(arch, spec, 24, 256, "bf16", on_gpu=True)
    assert plan_for(arch, spec, refused.value.need, 256, "bf16", on_gpu=True).peak_vram_gib <= refused.value.need
    with pytest.raises(BudgetTooSmall) as fp16:  # fp16: full fine-tuning on one GPU is refused, so it is not offered
        plan_for(arch, spec, 24, 256, "fp16", on_gpu=True)
    assert "One GPU" not in str(fp16.value)


@pytest.mark.parametrize("arch", ["qwen3", "gemma3", "gpt_oss"])
def test_the_model_built_empty_is_the_loaded_model_without_its_weights(arch, tmp_path):
    """What ranks > 0 build (engine.models.loading.empty_model): the loaded model's parameters by name and shape, on
    the meta device, tied as it is (Qwen3's head), with the same attention (gpt-oss: eager) and the same computed
    buffers (rotary frequencies, Gemma's embedding scale), which no state dict carries."""
    from tiny import make_model

    from engine.models.loading import empty_model, load_model

    folder = make_model(arch, tmp_path / arch)
    placement = Placement("cpu", "fp32", "test")
    loaded, empty = load_model(folder, placement), empty_model(folder, placement)
    assert {n: p.shape for n, p in empty.named_parameters()} == {n: p.shape for n, p in loaded.named_parameters()}
    assert all(p.is_meta for p in empty.parameters())
    assert empty.config._attn_implementation == loaded.config._attn_implementation
    assert (empty.lm_head.weight is empty.get_input_embeddings().weight) == loaded.config.tie_word_embeddings
    buffers = dict(loaded.named_buffers())
    assert buffers.keys() == dict(empty.named_buffers()).keys()
    for name, value in empty.named_buffers():
        torch.testing.assert_close(value, buffers[name], msg=name)
