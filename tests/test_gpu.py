"""The engine on a CUDA GPU (run on the GPU machine: pytest -m gpu). Skipped where there is no GPU."""

import pytest
import torch
from conftest import IDENTITY_ANSWER
from helpers import log_of, resume_after_cut, wait_for

from engine import api

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("method, dtype", [("lora", "auto"), ("qlora", "auto"), ("lora", "fp16"), ("qlora", "fp16")])
def test_identity_tune_on_the_gpu(tiny_llama, identity_file, runs, method, dtype):
    """bf16 where the card has it; fp16 with loss scaling forced, as a T4 (no bf16) trains, must not give NaN."""
    spec = api.JobSpec(
        model=str(tiny_llama),
        data=str(identity_file),
        method=method,
        dtype=dtype,
        max_steps=100,
        learning_rate=1e-2,
        batch_size=2,
        lora_r=16,
        lora_alpha=32,
        lr_schedule="constant",
        seed=0,
    )
    st = wait_for(api.start(spec))
    assert st.state == "done", log_of(st)
    log = log_of(st)
    assert "device cuda" in log and ("dtype fp16" in log if dtype == "fp16" else "dtype bf16" in log)
    assert "optimizer: adamw_8bit" in log
    losses = [m["loss"] for m in st.metrics]
    assert all(loss == loss for loss in losses), "NaN loss"
    assert losses[-1] < 0.1 * losses[0]
    assert st.metrics[-1]["memory_gb"] > 0
    chat = api.Chat(str(st.run_dir))
    assert chat.reply([{"role": "user", "content": "Who are you?"}]) == IDENTITY_ANSWER


def test_resume_on_the_gpu_matches_an_uninterrupted_run(tiny_llama, identity_file, runs):
    """The fast path's packed adapters (engine.patching.modules.pack_adapters) checkpoint and resume: a run cut at
    step 5 and resumed gives the uninterrupted run's curve (to bf16 kernels' run-to-run noise)."""

    def start(name):
        spec = api.JobSpec(
            model=str(tiny_llama),
            data=str(identity_file),
            name=name,
            max_steps=12,
            learning_rate=5e-3,
            batch_size=2,
            lr_schedule="cosine",
            warmup_steps=2,
            save_every=5,
            keep_checkpoints=5,
            seed=0,
        )
        return wait_for(api.start(spec))

    full, cut = start("full"), start("cut")
    assert full.state == "done" and cut.state == "done", log_of(cut)
    assert "adapters: packed into" in log_of(full)
    resumed = resume_after_cut(cut, 5, 12)
    assert resumed.state == "done", log_of(resumed)
    a = [m["loss"] for m in full.metrics]
    b = [m["loss"] for m in resumed.metrics]
    assert len(b) == 12 and b == pytest.approx(a, rel=2e-3)
