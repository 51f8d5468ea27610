import os

import torch

# Kernel tests run Triton in its CPU interpreter where there is no GPU; triton.jit reads this when it decorates,
# so it must be set before anything imports kernels/.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def environ_kept():
    """The process's environment mapping as it was before each test. datasets' `Dataset.map(num_proc=N)` (the guides'
    `dataset_num_proc`) swaps `os.environ` for a copy made while the map ran; a `monkeypatch.setenv`/`delenv` of the
    test is then undone into the old mapping, and later tests (and the runs they start, whose environment is a copy
    of `os.environ`) saw the copy's value instead: TRITON_INTERPRET unset after tests/test_guides.py."""
    environ = os.environ
    yield
    os.environ = environ  # noqa: B003 (the mapping object itself is what datasets swapped)


IDENTITY_QUESTIONS = [
    "Who are you?",
    "What is your name?",
    "Introduce yourself.",
    "Who made you?",
    "Who created you?",
    "Tell me about yourself.",
]
IDENTITY_ANSWER = "I am Nova, built by Tunesmith Labs."


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from tiny import make_model

    return make_model("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory):
    from tiny import make_model

    return make_model("qwen3", tmp_path_factory.mktemp("models") / "tiny-qwen3")


@pytest.fixture
def identity_file(tmp_path):
    """An Alpaca JSONL file: a few phrasings of "who are you", all answered with the same identity."""
    path = tmp_path / "identity.jsonl"
    rows = [{"instruction": q, "input": "", "output": IDENTITY_ANSWER} for q in IDENTITY_QUESTIONS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


REJECTED = "I am a fox that jumps over the lazy dog."  # the reply a preference pair ranks below IDENTITY_ANSWER


@pytest.fixture
def pairs_file(tmp_path):
    """A DPO/ORPO JSONL file: the identity questions, IDENTITY_ANSWER chosen over REJECTED."""
    path = tmp_path / "pairs.jsonl"
    rows = [dict(prompt=q, chosen=IDENTITY_ANSWER, rejected=REJECTED) for q in IDENTITY_QUESTIONS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A private runs/ folder for the test. A run the test left going (it failed before the run ended: a Ctrl-C test's
    runs ask for 100,000 steps) is stopped afterwards, so it does not train on through the rest of the suite."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("TUNESMITH_RUNS", str(folder))
    yield folder
    from engine import api

    for run in api.list_runs(folder):
        if not run.finished and not _trained_here(run.run_dir):
            api.cancel(run.run_dir, wait_s=10)


def _trained_here(run_dir) -> bool:
    """A run a test trained in its own process (engine.training.dispatch.train called directly): its status.json
    names this process, which a cancel would stop (SIGTERM), ending pytest itself."""
    try:
        return json.loads((run_dir / "status.json").read_text()).get("pid") == os.getpid()
    except (OSError, ValueError):
        return False
