"""No file a user can be handed is unpickled: a crafted pickle (its `__reduce__` writes a marker file) in every file
resume, chat or export reads is refused with a sentence or ignored, and the marker never appears."""

import dataclasses
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_spec

from engine import api
from engine.core.runlog import RunLog, read_metrics
from engine.training.dispatch import train
from engine.training.steps import CHECKPOINT_FILES, load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path) -> None:
    """Write a pickle at `path` that would create `marker` if anything unpickled it, and prove that it would."""
    torch.save({"state": Payload(marker)}, path)
    torch.load(path, weights_only=False)  # the payload is live: plain unpickling runs it
    assert marker.exists()
    marker.unlink()


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    """A finished 3-step LoRA run (trained in this process), with a checkpoint at step 2 and the final adapter."""
    folder = tmp_path_factory.mktemp("runs") / "20250101-000000-t"
    folder.mkdir()
    data = folder.parent / "data.jsonl"
    data.write_text('{"instruction": "Who are you?", "input": "", "output": "I am Nova."}\n' * 4)
    spec = tiny_spec(tiny_llama, data, max_steps=3, keep_checkpoints=5)
    (folder / "job.yaml").write_text(spec.to_yaml())
    train(spec, folder, RunLog(folder), False, lambda: False, print)
    return spec, folder


def _objects(folder: Path, spec):
    """A model, optimizer and schedule shaped as the run's, to load a checkpoint into."""
    from engine.core.hardware import choose_placement
    from engine.models.loading import load_for_training
    from engine.training.steps import make_optimizer

    model, _ = load_for_training(spec, choose_placement("cpu", spec.dtype), lambda m: None)
    opt = make_optimizer(spec, [p for p in model.parameters() if p.requires_grad], "cpu", lambda m: None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, opt, sched


def test_checkpoints_hold_no_pickle_and_planted_ones_are_ignored(trained, tmp_path):
    spec, folder = trained
    ckpt = folder / "checkpoints" / "step-000002"
    assert set(CHECKPOINT_FILES) <= {f.name for f in ckpt.iterdir()}
    assert not [f for f in folder.rglob("*") if f.suffix in (".pt", ".bin", ".pkl")]
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    marker = tmp_path / "ran"
    step = copy / "checkpoints" / "step-000003"
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt", "adapter_model.bin", "training_args.bin"):
        plant(step / name, marker)
    shutil.rmtree(copy / "adapter")
    (copy / "status.json").write_text('{"state": "failed", "message": "x", "step": 3, "total_steps": 3}')
    more = dataclasses.replace(spec, max_steps=4)
    (copy / "job.yaml").write_text(more.to_yaml())
    train(more, copy, RunLog(copy), True, lambda: False, print)  # resumes from step 3 beside the planted files
    assert not marker.exists()
    assert [m["step"] for m in read_metrics(copy)] == [1, 2, 3, 4]


def _legacy(ckpt: Path, opt, sched) -> None:
    """Turn a checkpoint into the older layout: optimizer.pt, scheduler.pt and rng.pt written with torch.save."""
    for name in ("optimizer", "scheduler", "rng"):
        (ckpt / f"{name}.json").unlink()
        (ckpt / f"{name}.safetensors").unlink()
    torch.save(opt.state_dict(), ckpt / "optimizer.pt")
    torch.save(sched.state_dict(), ckpt / "scheduler.pt")
    torch.save(dict(torch=torch.get_rng_state(), python=random.getstate(), cuda=None), ckpt / "rng.pt")


@pytest.mark.parametrize("planted", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_an_older_pickled_checkpoint_is_read_as_plain_data_or_refused(trained, tmp_path, planted):
    spec, folder = trained
    ckpt = tmp_path / "step-000002"
    shutil.copytree(folder / "checkpoints" / "step-000002", ckpt)
    model, opt, sched = _objects(folder, spec)
    load_checkpoint(ckpt, model, opt, sched, print)
    expected = opt.state_dict()
    _legacy(ckpt, opt, sched)
    model, opt, sched = _objects(folder, spec)
    assert load_checkpoint(ckpt, model, opt, sched, print)["step"] == 2  # plain data: read by the safe loader
    for a, b in zip(opt.state_dict()["state"].values(), expected["state"].values(), strict=True):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=0, atol=0)
    marker = tmp_path / "ran"
    plant(ckpt / planted, marker)
    with pytest.raises(api.UserError, match=f"holds a {planted} that is not plain data"):
        load_checkpoint(ckpt, *_objects(folder, spec), print)
    assert not marker.exists()


def test_cli_resume_of_a_crafted_rng_pt_fails_with_a_sentence(trained, tmp_path):
    """The issue's attack: a shared run folder whose checkpoint's rng.pt runs a command on `python -m engine resume`."""
    spec, folder = trained
    run = tmp_path / "shared-run"
    shutil.copytree(folder, run)
    shutil.rmtree(run / "adapter")
    for c in (run / "checkpoints").iterdir():
        if c.name != "step-000002":
            shutil.rmtree(c)
    ckpt = run / "checkpoints" / "step-000002"
    _legacy(ckpt, *_objects(folder, spec)[1:])
    marker = tmp_path / "ran"
    plant(ckpt / "rng.pt", marker)
    (run / "status.json").write_text('{"state": "failed", "message": "x", "step": 2, "total_steps": 3}')
    out = subprocess.run(
        [sys.executable, "-m", "engine", "resume", str(run)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    st = api.poll(run)
    assert st.state == "failed" and "rng.pt that is not plain data" in st.message, out.stdout + out.stderr
    assert "delete the checkpoint folder" in st.message
    assert not marker.exists()


def test_chat_and_export_refuse_an_adapter_held_only_as_a_pickle(trained, tmp_path):
    spec, folder = trained
    adapter = tmp_path / "adapter"
    shutil.copytree(folder / "adapter", adapter)
    (adapter / "adapter_model.safetensors").unlink()
    marker = tmp_path / "ran"
    plant(adapter / "adapter_model.bin", marker)
    with pytest.raises(api.UserError, match="only as a pickle file .* safetensors only"):
        api.Chat(str(adapter), device="cpu")
    with pytest.raises(api.UserError, match="only as a pickle file"):
        api.export(str(adapter), "merged16", tmp_path / "out")
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    (run / "adapter" / "adapter_model.safetensors").unlink()
    plant(run / "adapter" / "adapter_model.bin", marker)
    with pytest.raises(api.UserError, match="only as a pickle file"):
        api.Chat(str(run), device="cpu")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_chat_ignores_a_pickle_beside_the_safetensors_adapter(trained, tmp_path):
    spec, folder = trained
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    marker = tmp_path / "ran"
    plant(run / "adapter" / "adapter_model.bin", marker)
    chat = api.Chat(str(run), device="cpu")
    assert chat.has_adapter
    chat.reply([{"role": "user", "content": "Who are you?"}], max_new_tokens=2)
    assert not marker.exists()
