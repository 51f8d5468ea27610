"""kernels/dispatch.py: decided once per process, overridable by env var and by `force()` in tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import dispatch

ROOT = Path(__file__).resolve().parents[2]


def _decided(env: dict) -> str:
    code = "from kernels import dispatch; print(dispatch.BACKEND, '|', dispatch.REASON)"
    clean = {k: v for k, v in os.environ.items() if k not in ("TUNESMITH_KERNELS", "TRITON_INTERPRET")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif("TUNESMITH_KERNELS" in os.environ, reason="the backend was chosen by hand")
def test_this_process_uses_triton():
    assert dispatch.BACKEND == "triton", dispatch.REASON
    assert dispatch.REASON


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU rule")
def test_cpu_without_interpreter_uses_the_reference():
    assert _decided({}).startswith("reference | no CUDA and TRITON_INTERPRET is not 1")
    assert _decided({"TRITON_INTERPRET": "1"}).startswith("triton |")


def test_env_override_wins():
    assert _decided({"TUNESMITH_KERNELS": "reference", "TRITON_INTERPRET": "1"}) == (
        "reference | TUNESMITH_KERNELS=reference"
    )


def test_force_nests_and_restores():
    assert dispatch.backend() == dispatch.BACKEND
    with dispatch.force("reference"):
        assert dispatch.backend() == "reference" and not dispatch.use_triton(torch.ones(1))
        with dispatch.force("triton"):
            assert dispatch.backend() == "triton"
        assert dispatch.backend() == "reference"
    assert dispatch.backend() == dispatch.BACKEND


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="triton"):
        with dispatch.force("cuda"):
            pass


def _fusion(env: dict) -> str:
    code = (
        "import kernels, os; from triton import knobs; "
        "print(os.environ['TRITON_DEFAULT_FP_FUSION'], knobs.language.fp_fusion_enabled(None))"
    )
    clean = {k: v for k, v in os.environ.items() if k != "TRITON_DEFAULT_FP_FUSION"}
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr  # -W error: Triton 3.9's unset-default warning would fail the run
    return out.stdout.strip()


def test_fused_multiply_add_stays_on_unless_the_user_says():
    assert _fusion({}) == "1 True"
    assert _fusion({"TRITON_DEFAULT_FP_FUSION": "0"}) == "0 False"
