import collections
import contextlib
import time


def wait_for(handle, timeout=600, until=None):
    """Poll a run until it finishes (or `until(status)` is true); returns the last status."""
    from engine import api

    deadline = time.time() + timeout
    while time.time() < deadline:
        st = api.poll(handle)
        if st.finished or (until and until(st)):
            return st
        time.sleep(0.05)
    raise AssertionError(f"run did not finish in {timeout}s; log:\n{(handle.run_dir / 'log.txt').read_text()}")


def log_of(status) -> str:
    return (status.run_dir / "log.txt").read_text()


def learned_runs(tok, example) -> list[str]:
    """The decoded runs of consecutive trained tokens of a tokenized example, checking that every trained label is
    its own input token (labels are not shifted in our examples; the model shifts them)."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


def resume_after_cut(status, step: int, total: int):
    """Make a finished run look as if it died after `step` of `total` (later checkpoints and the final adapter gone,
    status failed), resume it, and return the resumed run's last status."""
    import json
    import shutil

    from engine import api

    for c in (status.run_dir / "checkpoints").glob("step-*"):
        if c.name != f"step-{step:06d}":
            shutil.rmtree(c)
    for final in ("adapter", "model"):  # LoRA's or full fine-tuning's
        shutil.rmtree(status.run_dir / final, ignore_errors=True)
    message = dict(state="failed", message="x", step=step, total_steps=total)
    (status.run_dir / "status.json").write_text(json.dumps(message))
    return wait_for(api.resume(status.run_dir))


def tiny_spec(model, data, **kw):
    """A JobSpec for a few quick LoRA steps of a tiny model on the CPU; `kw` overrides any field."""
    from engine import api

    base = dict(
        model=str(model),
        data=str(data),
        name="t",
        max_steps=40,
        save_every=2,
        keep_checkpoints=2,
        batch_size=2,
        grad_accum=1,
        max_seq_length=64,
        lora_r=4,
        lora_alpha=4,
        device="cpu",
        gradient_checkpointing=False,
        seed=0,
    )
    return api.JobSpec(**{**base, **kw})


@contextlib.contextmanager
def launch_hooks(kernels, on_launch):
    """Within it, every launch of these Triton kernels first calls on_launch(kernel, *args, **kwargs), through
    Triton's own pre-run hooks (the kernels still run; in the interpreter too)."""
    hooks = []
    for kernel in kernels:

        def hook(*args, _kernel=kernel, **kwargs):
            on_launch(_kernel, *args, **kwargs)

        kernel.add_pre_run_hook(hook)
        hooks.append((kernel, hook))
    try:
        yield
    finally:
        for kernel, hook in hooks:
            kernel.pre_run_hooks.remove(hook)


@contextlib.contextmanager
def count_launches(*kernels):
    """A Counter of the launches of these Triton kernels (by function name) while the block runs."""
    counts = collections.Counter()
    with launch_hooks(kernels, lambda kernel, *args, **kwargs: counts.update([kernel.fn.__name__])):
        yield counts


@contextlib.contextmanager
def failing_forward(n: int, fail):
    """Within the block, call `fail()` in the `n`-th training forward of a Llama model (a forward pre-hook torch
    offers for every module): a failure at a chosen step of a real run."""
    import torch

    forwards = []

    def hook(module, args):
        if type(module).__name__ == "LlamaForCausalLM" and module.training:
            forwards.append(module)
            if len(forwards) == n:
                fail()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def training_run(runs, model, data):
    """A run folder that the app reads as training, with a process whose command line names its job.yaml (as a
    run's does); yields the folder. The process is killed on exit."""
    import json
    import subprocess
    import sys

    folder = runs / "20260101-000000-t"
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text(tiny_spec(model, data).to_yaml())
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(folder / "job.yaml")])
    try:
        status = dict(state="running", message="training", step=3, total_steps=40, pid=run.pid)
        (folder / "status.json").write_text(json.dumps(status))
        yield folder
    finally:
        run.kill()
        run.wait()
