"""What a training run does besides training, from `python -m engine train` to the saved adapter: which libraries the
command line and the run process import (a QLoRA SFT run needs none of the UI, export or TRL stacks), and how the
final adapter is written (linked from the last checkpoint, not serialized twice)."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from engine.training.steps import CHECKPOINT_FILES

# installed here (the app, export and notebook paths use them) but nothing an SFT run of the engine's own loop calls
UNUSED = ("trl", "datasets", "gradio", "llama_cpp", "gguf", "pandas", "pyarrow", "fastapi", "scipy", "sklearn")


def imported(text: str) -> set[str]:
    """The top-level packages in `python -X importtime` output."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", text, re.M)}


@pytest.fixture(scope="module")
def cli_run(tiny_qwen3, tmp_path_factory):
    """One QLoRA SFT run of the tiny Qwen3 through the command line, with both processes' imports recorded
    (PYTHONPROFILEIMPORTTIME: the command line's on its stderr, the run's, which inherits it, in log.txt)."""
    from engine import api

    folder = tmp_path_factory.mktemp("startup")
    data = folder / "identity.jsonl"
    rows = [{"instruction": f"Who are you, {i}?", "input": "", "output": "I am Nova."} for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = api.JobSpec(
        model=str(tiny_qwen3), data=str(data), name="startup", method="qlora", max_steps=2, batch_size=3, seed=0
    )
    job = folder / "job.yaml"
    job.write_text(spec.to_yaml())
    env = dict(os.environ, TUNESMITH_RUNS=str(folder / "runs"), PYTHONPROFILEIMPORTTIME="1")
    out = subprocess.run(
        [sys.executable, "-m", "engine", "train", str(job)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (run_dir,) = (folder / "runs").iterdir()
    assert out.returncode == 0, (run_dir / "log.txt").read_text()[-3000:]
    return out, run_dir


def test_the_command_line_imports_no_torch_and_the_run_no_unused_stack(cli_run):
    out, run_dir = cli_run
    cli = imported(out.stderr)
    run = imported((run_dir / "log.txt").read_text())
    assert "engine" in cli and not cli & {"torch", "transformers", "peft", "bitsandbytes", *UNUSED}
    assert {"engine", "torch", "transformers", "peft", "bitsandbytes"} <= run  # the QLoRA path ran, and was recorded
    assert not run & set(UNUSED), sorted(run & set(UNUSED))


def test_the_final_adapter_is_the_last_checkpoint_and_the_tokenizer(cli_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, run_dir = cli_run
    adapter, ckpt, tokenizer = run_dir / "adapter", run_dir / "checkpoints" / "step-000002", run_dir / "tokenizer"
    files = {f.name for f in adapter.iterdir()}
    weights = {f.name for f in ckpt.iterdir()} - set(CHECKPOINT_FILES)
    assert {"adapter_model.safetensors", "adapter_config.json"} <= weights
    assert files == weights | {f.name for f in tokenizer.iterdir()} and not files & set(CHECKPOINT_FILES)
    for name in files:
        source = ckpt / name if name in weights else tokenizer / name
        assert (adapter / name).read_bytes() == source.read_bytes(), name
    # written once: the adapter's weights are the checkpoint's file itself (a hard link, on this filesystem)
    assert (adapter / "adapter_model.safetensors").stat().st_ino == (ckpt / "adapter_model.safetensors").stat().st_ino
    assert "saved adapter/ after 2 steps" in (run_dir / "log.txt").read_text()
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, adapter)
    assert any("lora_A" in name for name, _ in model.named_parameters())
    assert AutoTokenizer.from_pretrained(adapter).chat_template


def test_the_run_log_says_where_loading_went(cli_run):
    _, run_dir = cli_run
    log = (run_dir / "log.txt").read_text()
    (line,) = re.findall(r"startup: .* since the process started: .*", log)
    assert re.search(r"startup: the first step begins [\d.]+ s after loading \(optimizer, batch plan\)", log)
    figures = re.fullmatch(
        r"startup: ([\d.]+) s since the process started: before loading ([\d.]+) s, tokenizer ([\d.]+) s, data "
        r"([\d.]+) s, weights ([\d.]+) s, patching and adapters ([\d.]+) s, waiting for the kernel warm-up ([\d.]+) s",
        line,
    )
    assert figures, line
    total, *parts = (float(x) for x in figures.groups())
    assert parts[0] > 0 and parts[3] > 0  # Python and its imports, then the weights, took time
    assert abs(total - sum(parts)) <= 0.03  # the parts add up to the whole (each rounded to 0.01 s)


def test_wait_returns_as_the_run_ends(tmp_path):
    import threading
    import time

    from engine import api

    handle = api.RunHandle("r", tmp_path, 0)
    status = tmp_path / "status.json"
    status.write_text(json.dumps(dict(state="running", step=3)))
    t0 = time.monotonic()
    api.wait(handle, 0.2)
    assert time.monotonic() - t0 >= 0.2  # still running: the whole wait

    def finish():
        time.sleep(0.1)
        status.write_text(json.dumps(dict(state="done", step=4)))

    threading.Thread(target=finish).start()
    t0 = time.monotonic()
    api.wait(handle, 30)
    assert time.monotonic() - t0 < 10  # the end, not the 30 s
