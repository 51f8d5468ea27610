"""What machine we are on: GPU, memory, disk, and the device and dtype a run should use (with the reason)."""

import os
import platform
import shutil
from dataclasses import dataclass

from engine.core.errors import UserError


@dataclass(frozen=True)
class Placement:
    """Where and in which precision a run computes, and why."""

    device: str  # "cuda" or "cpu"
    dtype: str  # "fp32", "bf16" or "fp16"
    reason: str

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """Pick device and dtype: bf16 on GPUs that support it, fp16 with loss scaling otherwise (T4), fp32 on CPU."""
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise UserError(
            "This job asks for a GPU but PyTorch sees none; set device to 'auto' or 'cpu', or install a "
            "CUDA build of PyTorch."
        )
    dev = "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"
    if dtype != "auto":
        if dev == "cuda" and dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError(f"{torch.cuda.get_device_name(0)} has no bf16 support; choose dtype fp16 or auto.")
        return Placement(dev, dtype, f"dtype {dtype} as the job asks")
    if dev == "cpu":
        return Placement("cpu", "fp32", "no GPU: fp32 on the CPU (16-bit math is slow and imprecise there)")
    name = torch.cuda.get_device_name(0)
    major, minor = torch.cuda.get_device_capability(0)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return Placement("cuda", "bf16", f"{name} (compute {major}.{minor}) supports bf16")
    return Placement("cuda", "fp16", f"{name} (compute {major}.{minor}) has no bf16: fp16 with loss scaling")


def gpu_info() -> dict | None:
    """Name, memory and capability of the current GPU (GPU 0, or a rank's own in a multi-GPU run), or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    return dict(
        name=props.name,
        compute_capability=f"{props.major}.{props.minor}",
        vram_total_gb=round(total / 1e9, 2),
        vram_free_gb=round(free / 1e9, 2),
        bf16=torch.cuda.is_bf16_supported(including_emulation=False),
    )


def vram_budget_gib() -> float | None:
    """The GPU memory to plan for: $TUNESMITH_VRAM_GIB, else the card's total, else None (no GPU)."""
    if os.environ.get("TUNESMITH_VRAM_GIB"):
        return float(os.environ["TUNESMITH_VRAM_GIB"])
    info = gpu_info()
    return info["vram_total_gb"] * 1e9 / 2**30 if info else None


def doctor(workdir: str = ".") -> dict:
    """Versions of the stack, the GPU, and free RAM and disk: what a bug report needs."""
    import importlib.metadata as md

    import psutil

    versions = {}
    for pkg in (
        "torch",
        "triton",
        "transformers",
        "peft",
        "trl",
        "bitsandbytes",
        "datasets",
        "huggingface_hub",
        "gradio",
        "llama_cpp_python",
        "gguf",
    ):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    vm = psutil.virtual_memory()
    return dict(
        python=platform.python_version(),
        platform=platform.platform(),
        versions=versions,
        gpu=gpu_info(),
        cpu_count=os.cpu_count(),
        ram_total_gb=round(vm.total / 1e9, 2),
        ram_free_gb=round(vm.available / 1e9, 2),
        disk_free_gb=round(shutil.disk_usage(workdir).free / 1e9, 2),
        placement=choose_placement().__dict__,
    )


def memory_in_use_gb(device: str) -> float:
    """GPU memory allocated by this process on `device`, or its resident RAM on the CPU."""
    import torch

    if device == "cuda":
        return torch.cuda.memory_allocated() / 1e9
    import psutil

    return psutil.Process().memory_info().rss / 1e9
