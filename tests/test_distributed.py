"""Data-parallel runs on the CPU: two processes over gloo, launched by torchrun as a run on two GPUs is (DDP for LoRA,
FSDP2 for full fine-tuning), train as one process does over the same global batches; their checkpoints resume on
either count; a cancel stops both ranks after one checkpoint; a killed rank ends the run failed, not hung."""

import os
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
    assert ("FSDP2" if method == "full" else "DDP of the adapters") in text
    assert all(len(m["peak_memory_gb_per_gpu"]) == 2 for m in two.metrics[2:])
    assert not list(two.run_dir.glob(".rank-*"))

    back = resume_on(two, 4, gpus=1, grad_accum=4)
    assert_same_training(record(back), want)
    assert "resume: from step-000004" in log_of(back)


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
    assert launch._failure_sentence([broken], 1, two, 1)[0].startswith("The GPU 1 of 2 ended without a word")
