"""The engine on a CUDA GPU (run on the GPU machine: pytest -m gpu). Skipped where there is no GPU."""

import pytest
import torch
from conftest import IDENTITY_ANSWER
from helpers import log_of, wait_for

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
