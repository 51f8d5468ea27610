"""Record the Triton launches a block of code makes in the CPU interpreter, and compile them ahead of time for GPUs
this machine does not have (tests/kernels/test_compile_targets.py, and tests/test_warmup.py's binder).

Recording: inside `recorded()`, every launch of a kernel of kernels/ becomes a `Launch`: the key under which a CUDA
build of Triton would compile it (its specialization: signature types, constexprs, 16-byte alignment and divisibility
attributes, from the CUDA backend's binder and `JITFunction._pack_args`, as `JITFunction.run` makes it) and its launch
options (num_warps, num_stages, enable_fp_fusion, ...). The options are read where the interpreter's own `run`
receives them (its GridExecutor drops them before the pre-run hooks), by wrapping each kernel's `run`; the kernel
still runs in the interpreter.

Compiling: `compile_all` hands the launches to this file run as a script, in a subprocess with TRITON_INTERPRET=0
(the interpreter patches triton.language in its process, where a real compile fails), which compiles each for each
GPUTarget with `triton.compile` (Triton ships ptxas: no GPU needed) and reports the shared memory per block the
compiled kernel asks for (`metadata.shared`), or the compiler's error.
"""

import contextlib
import importlib
import json
import os
import pickle
import pkgutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Launch(NamedTuple):
    """One specialization of one kernel, as Triton compiles it (hashable: a set of them holds each once)."""

    module: str  # e.g. "kernels.rms_norm"
    name: str  # the @triton.jit function's name
    signature: tuple  # ((parameter, type), ...), "constexpr" for constexprs
    constexprs: tuple  # ((path, value), ...)
    attrs: tuple  # ((path, ((attribute, value), ...)), ...)
    options: tuple  # ((launch option, value), ...): num_warps, num_stages, enable_fp_fusion, ...

    def uses_bf16(self) -> bool:
        """Whether a pointer or scalar is bf16, or a constexpr flag (BF16, ROUND_BF16) says the kernel rounds to it."""
        flags = {self._param(path): value for path, value in self.constexprs}
        return any("bf16" in t for _, t in self.signature) or any(v is True and "BF16" in k for k, v in flags.items())

    def _param(self, path) -> str:
        return self.signature[path[0] if isinstance(path, tuple) else path][0]

    def label(self) -> str:
        """A short readable name: kernel, its constexprs and options."""
        consts = ", ".join(f"{self._param(p)}={v}" for p, v in self.constexprs)
        types = ",".join(t.lstrip("*") for _, t in self.signature if t != "constexpr" and t.startswith("*"))
        opts = ", ".join(f"{k}={v}" for k, v in self.options)
        return f"{self.name}({types}; {consts}; {opts})"


def jit_functions() -> dict[str, object]:
    """Every @triton.jit function defined in kernels/, by "module.name" (device helpers included)."""
    import triton

    import kernels

    found = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"kernels.{info.name}")
        for name, obj in vars(module).items():
            fn = getattr(obj, "fn", None)
            if isinstance(obj, triton.runtime.KernelInterface) and fn is not None and fn.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = obj
    return found


def launchable(functions: dict[str, object]) -> set[str]:
    """The functions no other jit function of kernels/ calls: the kernels (the rest are device helpers)."""
    keys = {id(obj): key for key, obj in functions.items()}
    called = set()
    for obj in functions.values():
        called |= {
            keys[id(obj.fn.__globals__.get(n))]
            for n in obj.fn.__code__.co_names
            if id(obj.fn.__globals__.get(n)) in keys
        }
    return set(functions) - called


def binder(kernel):
    """(JITFunction, CUDA backend, binder) for an interpreted kernel as a CUDA build of Triton (sm_90) makes them, with
    the same decorator arguments: the binder returns (bound arguments, specialization, options)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    jit = JITFunction(kernel.fn, **kernel.kwargs)
    backend = make_backend(GPUTarget("cuda", 90, 32))
    return jit, backend, create_function_from_signature(jit.signature, jit.params, backend)


def _freeze(value):
    return tuple((k, _freeze(v)) for k, v in value) if isinstance(value, list) else value


@contextlib.contextmanager
def recorded(run: bool = True):
    """Within it, every launch of a kernel of kernels/ (in the interpreter) adds its `Launch` to the set yielded.

    Args:
        run: False skips the kernels themselves (their outputs stay as allocated): the launchers, the binder and
            the host code between launches run as before, in a fraction of the time, for callers that read no result.
    """
    launches: set[Launch] = set()
    wrapped = []
    for kernel in jit_functions().values():
        jit, backend, bind = binder(kernel)
        names = {p.name for p in jit.params}

        def wrapper(
            *args, grid, warmup, _kernel=kernel, _jit=jit, _backend=backend, _bind=bind, _names=names, **kwargs
        ):
            options = {k: v for k, v in kwargs.items() if k not in _names}
            bound, spec, parsed = _bind(*args, **kwargs)
            _, signature, constexprs, attrs = _jit._pack_args(_backend, kwargs, bound, spec, parsed)
            launches.add(
                Launch(
                    _kernel.fn.__module__,
                    _kernel.fn.__name__,
                    tuple(signature.items()),
                    tuple(sorted(constexprs.items())),
                    tuple(sorted((path, _freeze(a)) for path, a in attrs.items())),
                    tuple(sorted(options.items())),
                )
            )
            return type(_kernel).run(_kernel, *args, grid=grid, warmup=warmup, **kwargs) if run else None

        kernel.run = wrapper
        wrapped.append(kernel)
    try:
        yield launches
    finally:
        for kernel in wrapped:
            del kernel.run


def compile_all(jobs: list[tuple[int, Launch]], processes: int = 2) -> list[dict]:
    """Compile each (compute capability, launch) in subprocesses without the interpreter; for each job in order,
    {"shared": bytes of shared memory per block, "seconds": the compile's time} or {"error": the compiler's message}."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        parts = [jobs[i::processes] for i in range(processes)]
        running = []
        for i, part in enumerate(parts):
            src, dst = Path(tmp) / f"jobs{i}.pkl", Path(tmp) / f"out{i}.json"
            src.write_bytes(pickle.dumps(part))
            cmd = [sys.executable, __file__, str(src), str(dst)]
            running.append((subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True), dst))
        outs = []
        for proc, dst in running:
            _, err = proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"the compile subprocess failed ({proc.returncode}):\n{err[-4000:]}")
            outs.append(json.loads(dst.read_text()))
    results = [None] * len(jobs)
    for i, out in enumerate(outs):
        results[i::processes] = out
    return results


def _compile(capability: int, launch: Launch) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    jit = getattr(importlib.import_module(launch.module), launch.name)
    attrs = {path: [list(a) for a in attr] for path, attr in launch.attrs}
    source = ASTSource(jit, dict(launch.signature), dict(launch.constexprs), attrs)
    options = backend.parse_options(dict(launch.options))
    started = time.perf_counter()
    try:
        kernel = triton.compile(source, target=target, options=options.__dict__)
    except Exception as exc:  # noqa: BLE001  any compiler failure is the finding to report
        return {"error": f"{type(exc).__name__}: {str(exc)[-1500:]}"}
    return {"shared": kernel.metadata.shared, "seconds": round(time.perf_counter() - started, 2)}


if __name__ == "__main__":  # the compile subprocess: jobs pickle in, results JSON out
    sys.path.insert(0, str(Path(__file__).parent))
    pending = pickle.loads(Path(sys.argv[1]).read_bytes())
    Path(sys.argv[2]).write_text(json.dumps([_compile(cc, launch) for cc, launch in pending]))
