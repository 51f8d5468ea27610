"""Data-parallel runs on the CPU: two processes over gloo, launched by torchrun as a run on two GPUs is (averaged
adapter gradients for LoRA, FSDP2 for full fine-tuning), train as one process does over the same global batches; their
checkpoints resume on either count; a cancel stops both ranks after one checkpoint; a killed rank ends the run failed,
not hung. Also the per-GPU estimate and the machine presets."""

import json
import os
import re
import signal
import time

import psutil
import pytest
import torch
import yaml
from helpers import log_of, resume_after_cut, tiny_spec, wait_for
from safetensors.torch import load_file

from engine import api
from engine.core.errors import UserError
from engine.training import launch

STEPS = 6  # a step is 4 micro-batches of 1 example; 6 examples, so steps 2, 4 and 5 start in a new epoch


def spec(model, data, **kw):
    return tiny_spec(model, data, max_steps=STEPS, batch_size=1, save_every=2, keep_checkpoints=5, **kw)


def record(status) -> dict:
    """What a run trained: its curve, its token counts and its final weights (adapter or model)."""
    assert status.state == "done", log_of(status)
    assert [m["step"] for m in status.metrics] == list(range(1, STEPS + 1))
    final = status.run_dir / ("model" if (status.run_dir / "model").is_dir() else "adapter")
    return dict(
        loss=[m["loss"] for m in status.metrics],
        tokens=[m["tokens"] for m in status.metrics],
        weights=load_file(next(final.glob("*.safetensors"))),
    )


def assert_same_training(got: dict, want: dict):
    """Equal curves, token counts and final weights, within fp32 rounding (the sums run in another order)."""
    assert got["tokens"] == want["tokens"]
    assert got["loss"] == pytest.approx(want["loss"], abs=2e-5)
    assert got["weights"].keys() == want["weights"].keys()
    for name, value in want["weights"].items():
        torch.testing.assert_close(got["weights"][name], value, atol=2e-5, rtol=1e-4, msg=name)


def resume_on(status, step: int, gpus: int, grad_accum: int):
    """Resume `status`'s run from its checkpoint of `step` on `gpus` processes, with the same global batch."""
    job = status.run_dir / "job.yaml"
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "gpus": gpus, "grad_accum": grad_accum}))
    return resume_after_cut(status, step, STEPS)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_processes_train_as_one_and_checkpoints_resume_on_either_count(method, tiny_llama, identity_file, runs):
    """One process with grad_accum 4 is the reference. Its step-2 checkpoint resumes on two processes with
    grad_accum 2 (the same global batch), whose step-4 checkpoint resumes on one process again: both curves and
    final weights are the reference's."""
    kw = dict(method=method, learning_rate=1e-3 if method == "full" else 5e-3)
    one = wait_for(api.start(spec(tiny_llama, identity_file, grad_accum=4, **kw)))
    want = record(one)

    two = resume_on(one, 2, gpus=2, grad_accum=2)
    assert_same_training(record(two), want)
    text = log_of(two)
    assert "launch: 2 processes, one process each, through torchrun" in text
    assert f"{STEPS} steps of 1x2 per process x 2 = 4 a step, lr unchanged" in text
    assert ("FSDP2" if method == "full" else "adapters' gradients averaged") in text
    assert method != "full" or "sharded over 2 ranks from rank 0's weights" in text  # rank 1 loaded none
    assert all(len(m["peak_memory_gb_per_gpu"]) == 2 for m in two.metrics[2:])
    assert not list(two.run_dir.glob(".rank-*"))

    back = resume_on(two, 4, gpus=1, grad_accum=4)
    assert_same_training(record(back), want)
    assert "resume: from step-000004" in log_of(back)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
def test_two_gpus_train_as_one_over_nccl(method, tiny_llama, identity_file, runs):
    """The same on two GPUs (NCCL, the fast path with packed adapters and CUDA graphs per rank, FSDP2 for full over
    the fast path's kernels and fused loss): one GPU with grad_accum 4 and two with grad_accum 2 train alike. QLoRA
    computes in bf16 (its kernels' path), whose rounding differs with the order of the sums, hence its looser
    bound."""
    dtype = "bf16" if method == "qlora" else "fp32"
    kw = dict(method=method, device="cuda", dtype=dtype, learning_rate=1e-3 if method == "full" else 5e-3)
    one = record(wait_for(api.start(spec(tiny_llama, identity_file, grad_accum=4, gpus=1, **kw))))
    two = wait_for(api.start(spec(tiny_llama, identity_file, grad_accum=2, gpus=2, **kw)))
    got = record(two)
    assert "over nccl" in log_of(two)
    assert method != "full" or "each rank computes through the fast path (" in log_of(two)  # patched, then sharded
    assert got["tokens"] == one["tokens"]
    bound = 2e-2 if dtype == "bf16" else 1e-4
    assert got["loss"] == pytest.approx(one["loss"], rel=bound)
    for name, value in one["weights"].items():
        torch.testing.assert_close(got["weights"][name].float(), value.float(), atol=bound, rtol=bound, msg=name)


def rank_processes(status) -> dict[int, psutil.Process]:
    """The rank processes under a run's supervisor (status.json's pid -> torchrun -> ranks), by rank."""
    import json

    supervisor = psutil.Process(json.loads((status.run_dir / "status.json").read_text())["pid"])
    found = {}
    for proc in supervisor.children(recursive=True):
        rank = proc.environ().get("RANK")
        if rank is not None and proc.environ().get("LOCAL_RANK") is not None:
            found[int(rank)] = proc
    return found


def test_cancel_stops_every_rank_after_one_checkpoint(tiny_llama, identity_file, runs):
    handle = api.start(tiny_spec(tiny_llama, identity_file, max_steps=500, save_every=1000, gpus=2))
    st = wait_for(handle, until=lambda s: s.step >= 2)
    ranks = rank_processes(st)
    assert sorted(ranks) == [0, 1]
    st = api.cancel(handle)
    assert st.state == "cancelled", log_of(st)
    assert [c.name for c in (st.run_dir / "checkpoints").glob("step-*")] == [f"step-{st.step:06d}"]
    assert 2 <= st.step < 500
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks.values())
    from ui import train_tab

    text, *_ = train_tab.follow(st.run_id)  # the monitor shows each GPU's (here each process's) memory
    assert "2 GPUs, peak memory per GPU: " in text


def test_a_killed_rank_ends_the_run_failed_within_a_timeout(tiny_llama, identity_file, runs):
    handle = api.start(tiny_spec(tiny_llama, identity_file, max_steps=500, save_every=1000, gpus=2))
    st = wait_for(handle, until=lambda s: s.step >= 2)
    os.kill(rank_processes(st)[1].pid, signal.SIGKILL)
    killed = time.monotonic()
    st = wait_for(handle, timeout=60)
    assert st.state == "failed", log_of(st)
    assert st.message.startswith("The process 1 of 2 ended without a word"), st.message
    assert time.monotonic() - killed < launch.SHUTDOWN_S + 20
    assert not list(st.run_dir.glob(".rank-*"))


def test_how_many_processes_a_job_gets(tiny_llama, identity_file):
    base = tiny_spec(tiny_llama, identity_file)
    assert launch.plan_launch(base) == launch.Launch(1, "process")
    assert launch.plan_launch(base.replace(gpus=3)).units == "3 processes"
    assert launch.plan_launch(base.replace(objective="dpo")).processes == 1
    with pytest.raises(UserError, match="DPO trains on one GPU for now; set gpus to 1"):
        launch.plan_launch(base.replace(objective="dpo", gpus=2))
    with pytest.raises(UserError, match="validation .* trains on one GPU for now; set gpus to 1"):
        launch.plan_launch(base.replace(eval_fraction=0.1, gpus=2))


def test_runs_that_train_on_one_gpu_take_the_first_of_several_with_a_line_saying_so(tiny_llama, identity_file):
    """With two GPUs visible and `gpus` not set, SFT takes both; DPO, ORPO, GRPO and a run with validation take the
    first, with the log's line saying why; asking for two of them is refused."""
    base = tiny_spec(tiny_llama, identity_file, device="auto")
    assert launch.plan_launch(base, found=2) == launch.Launch(2, "GPU")
    assert launch.plan_launch(base.replace(gpus=1), found=2) == launch.Launch(1, "GPU")
    one_gpu = dict(
        DPO=base.replace(objective="dpo"),
        ORPO=base.replace(objective="orpo"),
        GRPO=base.replace(objective="grpo", rewards=({"preset": "regex", "pattern": "Nova"},)),
        **{"A run with validation (eval_fraction or eval_data)": base.replace(eval_fraction=0.1)},
    )
    for why, spec in one_gpu.items():
        assert launch.plan_launch(spec, found=2) == launch.Launch(
            1, "GPU", f"launch: {why} trains on one GPU for now: 2 GPUs are visible, this run uses the first of them"
        )
        assert launch.plan_launch(spec.replace(gpus=1), found=2) == launch.Launch(1, "GPU")
        with pytest.raises(UserError, match=f"^{re.escape(why)} trains on one GPU for now; set gpus to 1.$"):
            launch.plan_launch(spec.replace(gpus=2), found=2)
    assert launch.plan_launch(one_gpu["DPO"], found=1) == launch.Launch(1, "GPU")  # one visible: nothing to say
    assert launch.plan_launch(one_gpu["DPO"], found=0) == launch.Launch(1, "process")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_dpo_with_two_gpus_visible_trains_on_the_first_as_with_one(tiny_llama, tmp_path, runs, monkeypatch):
    """A DPO run with two GPUs visible trains on one, as with only that one visible: the same losses (TRL's Trainer
    would otherwise wrap the model in nn.DataParallel and double the batch)."""
    from conftest import IDENTITY_ANSWER, IDENTITY_QUESTIONS

    pairs = tmp_path / "pairs.jsonl"
    rows = [dict(prompt=q, chosen=IDENTITY_ANSWER, rejected="No.") for q in IDENTITY_QUESTIONS]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tiny_spec(tiny_llama, pairs, objective="dpo", device="auto", max_steps=4, gpus=0)
    both = wait_for(api.start(spec))
    assert both.state == "done", log_of(both)
    assert "launch: DPO trains on one GPU for now: 2 GPUs are visible, this run uses the first of them" in log_of(both)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    alone = wait_for(api.start(spec))
    assert alone.state == "done", log_of(alone)
    assert [m["loss"] for m in both.metrics] == pytest.approx([m["loss"] for m in alone.metrics], rel=1e-3)


def test_the_run_fails_with_the_sentence_of_the_rank_that_failed_first():
    two = launch.Launch(2, "GPU")
    broken = dict(rank=0, message="connection closed", communication=True, user=False, time=1.0)
    own = dict(rank=1, message="Ran out of GPU memory at step 3.", communication=False, user=False, time=2.0)
    assert launch._failure_sentence([broken, own], None, two, 1) == (
        "The GPU 1 of 2 stopped: Ran out of GPU memory at step 3.",
        False,
    )
    users = [dict(own, rank=r, message="Fix the data.", user=True) for r in (0, 1)]
    assert launch._failure_sentence(users, None, two, 2) == ("Fix the data.", True)
    assert launch._failure_sentence([broken], [1], two, 1)[0].startswith("The GPU 1 of 2 ended without a word")
    # both seen gone at once (torchrun stopped rank 0 within one look): the one that wrote nothing was killed
    assert launch._failure_sentence([broken], [0, 1], two, 1)[0].startswith("The GPU 1 of 2 ended without a word")
    assert launch._failure_sentence([], [0, 1], two, 1)[0].startswith("The GPU 0 of 2 ended without a word")


def test_torchruns_root_cause_names_the_rank(tmp_path):
    """torchrun's failure report at the end of log.txt names the first rank that failed (the one that was killed),
    where the supervisor's polling saw two ranks gone at once."""
    report = (
        "Failures:\n[1]:\n  rank      : 0 (local_rank: 0)\n  exitcode  : -15 (pid: 13654)  (SIGTERM)\n"
        "Root Cause (first observed failure):\n[0]:\n  time      : 2026-12-05_00:30:13\n"
        "  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 13655)  (SIGKILL)\n"
    )
    (tmp_path / "log.txt").write_text("00:30:12 step 2/500: loss 4.8\n" + report)
    assert launch.root_cause(tmp_path / "log.txt") == 1
    (tmp_path / "log.txt").write_text("00:30:12 step 2/500: loss 4.8\n")
    assert launch.root_cause(tmp_path / "log.txt") is None
    assert launch.root_cause(tmp_path / "missing.txt") is None


def test_estimate_plans_per_gpu_with_full_fine_tunings_shards(capsys):
    """`python -m engine estimate --gpus 2`: full fine-tuning's weights are halved per GPU, plus two layers and the
    embeddings (FSDP2's root) gathered whole; a QLoRA run needs on each GPU what it needs on one."""
    from engine.__main__ import main
    from engine.api.models import model_arch
    from engine.memory.estimate import GIB, layer_weight_bytes

    arch = model_arch("Qwen/Qwen3-4B")
    assert main(["estimate", "--model", "Qwen/Qwen3-4B", "--method", "full", "--vram", "80", "--ram", "256"]) == 0
    one = json.loads(capsys.readouterr().out)
    args = ["estimate", "--model", "Qwen/Qwen3-4B", "--method", "full", "--vram", "80", "--ram", "256", "--gpus", "2"]
    assert main(args) == 0
    two = json.loads(capsys.readouterr().out)
    assert (one["gpus"], two["gpus"]) == (1, 2) and one["fits"] and two["fits"]
    layer = layer_weight_bytes(arch, "full") / GIB
    assert one["peak_parts_gib"]["weights"] == pytest.approx(arch.params * 2 / GIB, abs=0.01)
    root = arch.embedding_params * 2 / GIB
    assert two["peak_parts_gib"]["weights"] == pytest.approx(arch.params / GIB + 2 * layer + root, abs=0.01)
    assert two["peak_vram_gib"] < one["peak_vram_gib"]
    qlora = [api.estimate("Qwen/Qwen3-4B", "qlora", 1024, 1, vram_gib=16, ram_gib=64, gpus=n) for n in (1, 2)]
    assert qlora[0]["peak_vram_gib"] == qlora[1]["peak_vram_gib"]


def test_machine_presets_plan_kaggles_two_t4s():
    """Every machine preset loads; Kaggle's 2 x T4 plans per T4 in fp16 for a run on both."""
    from engine.models.machines import MACHINES, machines
    from ui import model_tab

    assert set(machines()) == set(yaml.safe_load(MACHINES.read_text())["machines"])
    e = api.estimate("Qwen/Qwen3-4B", "qlora", ram_gib=32, machine="kaggle-2xt4")
    assert (e["gpus"], e["dtype"], e["vram_budget_gib"], e["tier_gb"], e["fits"]) == (2, "fp16", 14.6, 16, True)
    with pytest.raises(UserError, match="No machine preset 'kaggle'; known ones are: kaggle-2xt4"):
        api.estimate("Qwen/Qwen3-4B", "qlora", machine="kaggle")
    assert model_tab.gpus_line() == "GPUs found: none."  # this CPU machine


def test_the_checkpoint_timer_is_agreed_by_every_rank(tiny_llama, identity_file, runs, tmp_path, monkeypatch):
    """Each rank keeps its own clock, started at a slightly different moment (rank 0 saves the tokenizer first); a
    save is collective, so a timer that came due on one rank alone left the other in the next step's collectives
    (a hang, or gradients averaged with a barrier). Here rank 1's clock runs at half speed: the ranks still save the
    same steps, and the run ends."""
    hook = tmp_path / "clock"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, time\n"
        "if os.environ.get('RANK') == '1':\n"
        "    _real = time.monotonic\n"
        "    time.monotonic = lambda: _real() / 2\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(hook))
    spec = tiny_spec(tiny_llama, identity_file, max_steps=80, save_every=0, save_every_minutes=0.002, gpus=2)
    st = wait_for(api.start(spec), timeout=120)  # the ranks' steps take ~20 ms here: the timer saves many times
    assert st.state == "done", log_of(st)
    assert [m["step"] for m in st.metrics] == list(range(1, 81))
    saved = [int(s) for s in re.findall(r"checkpoint: saved step (\d+)", log_of(st))]
    assert len(saved) > 1 and saved[-1] == 80, log_of(st)  # by the timer, then at the end
