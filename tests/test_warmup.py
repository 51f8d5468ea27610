"""engine.patching.warmup: the kernels compiled while the weights load are the ones the first step launches.

The check is Triton's own: every launch, here in Triton's CPU interpreter, is turned into the key under which a CUDA
build of Triton (sm_90) would compile and cache the kernel (its specialization: constexprs, pointer dtypes and 16-byte
alignment, integers equal to 1 or multiples of 16), with Triton's binder for that backend. A patched tiny model's
padding-free training step must launch no key the warm-up did not. The launch options (warps, stages) are not in the
key here (the interpreter drops them), but every launcher here derives them from the constexprs that are.
"""

import contextlib
import tempfile

import pytest
import torch
from helpers import launch_hooks
from launches import binder, jit_functions
from test_batching import examples_for
from test_patching_parity import ARCHS, tiny_model, with_lora

from engine.data.batching import most_tokens, padding_free, segment_slots
from engine.patching import patch_model, warmup
from engine.patching.modules import pack_adapters
from engine.spec.jobspec import JobSpec
from kernels import dispatch

pytest.importorskip("triton.runtime.interpreter")
# the CPU tests launch Triton's interpreter on CPU tensors; the GPU test below compiles for real
interpreted = pytest.mark.skipif(not dispatch.INTERPRET, reason="needs TRITON_INTERPRET=1 (no CUDA GPU)")


@contextlib.contextmanager
def compile_keys():
    """Within it, every Triton kernel launch of kernels/ adds (kernel name, its specialization) to the set yielded."""
    keys = set()
    binders = {kernel: binder(kernel)[2] for kernel in jit_functions().values()}

    def on_launch(kernel, *args, **kwargs):
        keys.add((kernel.fn.__name__, str(binders[kernel](*args, **kwargs)[1])))

    with launch_hooks(list(binders), on_launch):
        yield keys


def nf4_model(arch: str):
    """The tiny `arch` with a real bitsandbytes NF4 base (CPU backend), double-quantized as engine.models.loading
    quantizes it."""
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    spec = dict(ARCHS[arch], vocab_size=96)
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    dense = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    with tempfile.TemporaryDirectory() as tmp:
        dense.save_pretrained(tmp)
        return AutoModelForCausalLM.from_pretrained(
            tmp, quantization_config=quant, dtype=torch.float32, attn_implementation="sdpa"
        )


@interpreted
@pytest.mark.parametrize("arch, method", [("qwen3", "qlora"), ("llama", "lora"), ("gemma", "lora"), ("gemma2", "lora")])
def test_warmup_covers_the_first_steps_kernels(arch, method):
    """A patched tiny model's padding-free step (the adapters packed as engine.training.sft packs them) on a 128-token
    bucket launches only specializations the warm-up's 64-token launches compiled: Qwen3's per-head norms and tied
    head, a 4-bit base, Gemma's GeGLU, Gemma 2's soft caps and sliding windows."""
    base = nf4_model(arch) if method == "qlora" else tiny_model(arch, vocab=96, use_cache=False)
    base.config.use_cache = False
    cfg = base.config.to_dict()
    patch_model(base, log=lambda m: None)
    assert base.varlen_attention
    model = with_lora(base)
    pack_adapters(model, log=lambda m: None)
    model.train()
    batch_size = 3
    examples = examples_for([40, 50, 30])  # 120 tokens: the 128-token bucket
    batch = padding_free(
        examples, 0, "cpu", segment_slots(examples, batch_size), most_tokens(examples, batch_size), [128]
    )
    assert batch["input_ids"].shape == (1, 128)
    with compile_keys() as step:
        model(**batch).loss.backward()
    shapes = warmup.Shapes.from_config(cfg, method, batch_size)
    generator = torch.get_rng_state()
    with compile_keys() as warmed:
        done = warmup.warm(shapes, torch.float32, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), generator)  # LoRA's initialisation draws while the warm-up runs
    assert done == [name for name, _ in warmup.launches(shapes)]  # every launch ran in the interpreter
    names = {name for name, _ in step}
    expected = {"_rms_norm_fwd_kernel", "_rms_norm_bwd_kernel", "_rope_fwd_kernel", "_swiglu_fwd_kernel"}
    expected |= {"_swiglu_bwd_kernel", "_varlen_attention_fwd_kernel", "_varlen_attention_bwd_dq_kernel"}
    expected |= {"_varlen_attention_bwd_dkdv_kernel", "_varlen_attention_bwd_delta_kernel"}
    expected |= {"_cross_entropy_fwd_kernel"} | ({"_nf4_dequant_fwd_kernel"} if method == "qlora" else set())
    assert names == expected
    missed = sorted(step - warmed)
    assert not missed, f"the first step compiles {len(missed)} kernel(s) the warm-up did not: {missed}"


@interpreted
def test_the_check_sees_dtypes_and_alignment():
    """The keys tell a bf16 launch from an fp32 one and the loss's shifted (unaligned) labels from aligned ones, so a
    warm-up that differed there would fail the test above."""
    from kernels.cross_entropy import fused_linear_cross_entropy

    hidden, weight = torch.randn(1, 64, 16), torch.randn(96, 16)
    labels = torch.randint(0, 96, (1, 65))
    with compile_keys() as shifted:
        fused_linear_cross_entropy(hidden, weight, labels[:, 1:])
    with compile_keys() as aligned:
        fused_linear_cross_entropy(hidden, weight, labels[:, :-1])
    with compile_keys() as half:
        fused_linear_cross_entropy(hidden.bfloat16(), weight.bfloat16(), labels[:, 1:])
    assert len(shifted) == len(aligned) == len(half) == 1
    assert shifted != aligned and shifted != half


def test_shapes_from_a_config_without_layer_types():
    """A Gemma 2 config.json written without layer_types alternates sliding and global layers: both are warmed; a
    Qwen2 one with use_sliding_window false slides nowhere; a pre-quantized model's own double quantization counts."""
    from transformers import AutoConfig

    spec = dict(ARCHS["gemma2"], vocab_size=96)
    gemma2 = AutoConfig.for_model(spec.pop("model_type"), **spec).to_dict()
    del gemma2["layer_types"]
    shapes = warmup.Shapes.from_config(gemma2, "lora")
    assert shapes.windows == (0, gemma2["sliding_window"]) and shapes.softcap > 0 and shapes.final_softcap > 0
    assert shapes.activation == "gelu_tanh" and shapes.nf4 is None
    qwen2 = dict(ARCHS["qwen2"], vocab_size=96, sliding_window=4096, use_sliding_window=False)
    assert warmup.Shapes.from_config(qwen2, "qlora").windows == (0,)
    stored = dict(qwen2, quantization_config={"bnb_4bit_use_double_quant": False})
    assert warmup.Shapes.from_config(stored, "qlora").nf4 is False
    assert warmup.Shapes.from_config(dict(qwen2, hidden_act="gelu"), "lora").activation is None  # MLP kept unfused


def test_no_warmup_on_the_cpu(tiny_llama):
    """On the CPU the warm-up starts nothing and says so once; a training load logs it."""
    from engine.core.hardware import choose_placement
    from engine.models.loading import load_for_training, read_config

    spec = JobSpec(model=str(tiny_llama), data="-", method="lora")
    kernels_warm = warmup.start(spec, read_config(tiny_llama), "cpu", torch.float32)
    assert kernels_warm.thread is None
    lines = []
    kernels_warm.join(lines.append)
    kernels_warm.join(lines.append)
    assert lines == ["kernels: no warm-up (the model loads to cpu, where the fast path's GPU kernels do not run)"]
    lines = []
    load_for_training(spec, choose_placement("cpu"), lines.append)
    assert sum(line.startswith("kernels: no warm-up") for line in lines) == 1


@interpreted
def test_rms_norm_backward_compiles_once_for_every_row_count():
    """Its row counts follow the bucket: 4 rows give one row per program here, 8 two, 64 sixteen (classes 1, plain
    and multiple of 16), and all launch one specialization, so a new bucket compiles nothing and the warm-up's 64
    tokens stand for every bucket."""
    from kernels.rms_norm import rms_norm

    with compile_keys() as keys:
        for rows in (4, 8, 64):
            x = torch.randn(rows, 32, requires_grad=True)
            rms_norm(x, torch.ones(32)).sum().backward()
    assert len({key for key in keys if key[0] == "_rms_norm_bwd_kernel"}) == 1


@interpreted
@pytest.mark.parametrize(
    "changes, note",
    [
        (dict(fast_path=False), "the fast path is off"),
        (dict(model_type="gpt2"), "no fast path for model type 'gpt2'"),
        (dict(env="0"), "TUNESMITH_KERNEL_WARMUP=0"),
    ],
)
def test_no_warmup_where_no_kernel_will_run(changes, note, monkeypatch):
    if "env" in changes:
        monkeypatch.setenv("TUNESMITH_KERNEL_WARMUP", changes["env"])
    spec = JobSpec(model="-", data="-", method="lora", fast_path=changes.get("fast_path", True))
    cfg = dict(ARCHS["llama"], vocab_size=96, model_type=changes.get("model_type", "llama"))
    lines = []
    warmup.start(spec, cfg, "cuda:0", torch.bfloat16).join(lines.append)
    assert lines == [f"kernels: no warm-up ({note})"]


@interpreted
@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")
def test_no_warmup_for_a_gpu_placement_without_a_gpu():
    """The planner's refusals are tested with a GPU placement on the CPU: the warm-up then starts nothing."""
    spec = JobSpec(model="-", data="-", method="qlora")
    lines = []
    warmup.start(spec, dict(ARCHS["llama"], vocab_size=96), "cuda", torch.bfloat16).join(lines.append)
    assert lines == ["kernels: no warm-up (no CUDA device is visible here)"]


@interpreted
def test_a_failing_warmup_is_logged_and_the_run_goes_on():
    """An exception inside the warm-up (here varlen_attention refusing a 512 head dim) is logged with its traceback
    when joined, and nothing is raised: the first step compiles instead."""
    shapes = warmup.Shapes.from_config(dict(ARCHS["llama"], vocab_size=96, head_dim=512), "lora")
    kernels_warm = warmup.Warmup(shapes, torch.float32, torch.device("cpu"))
    lines = []
    kernels_warm.join(lines.append)
    assert "Traceback" in lines[0] and "varlen_attention" in lines[0]
    assert lines[1].startswith("kernels: the warm-up failed after") and "head dim 512" in lines[1]
    assert kernels_warm.done == ["rms_norm"]  # the steps before the failing one ran


@interpreted
def test_a_stopped_warmup_ends_between_steps_and_says_nothing():
    shapes = warmup.Shapes.from_config(dict(ARCHS["llama"], vocab_size=96), "lora")
    kernels_warm = warmup.Warmup(shapes, torch.float32, torch.device("cpu"))
    lines = []
    kernels_warm.join(lines.append, stop=True)
    assert lines == [] and kernels_warm.thread is None
    assert kernels_warm.done == [name for name, _ in warmup.launches(shapes)][: len(kernels_warm.done)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method, dtype", [("lora", "bf16"), ("qlora", "fp16")])
def test_after_the_warmup_the_first_step_compiles_nothing_and_no_memory_is_held(method, dtype, tmp_path):
    """On the GPU, loaded as a run loads it (engine.models.loading.load_model: a 4-bit NF4 base for QLoRA) and under
    autocast as a run trains: the warm-up started from config.json compiles every kernel of a patched model's
    padding-free step (Triton's post-compile hook sees no compile in the step), logs its line, holds no memory after
    it and draws nothing from the CUDA generator."""
    import triton

    from engine.core.hardware import Placement
    from engine.models.loading import load_model, read_config

    size = dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=16, num_key_value_heads=8, head_dim=64)
    tiny_model("qwen3", vocab=4096, use_cache=False, **size).save_pretrained(tmp_path)
    placement = Placement("cuda", dtype, "the test's")
    spec = JobSpec(model=str(tmp_path), data="-", method=method, batch_size=3)
    before, generator = torch.cuda.memory_allocated(), torch.cuda.get_rng_state()
    kernels_warm = warmup.start(spec, read_config(tmp_path), "cuda", placement.torch_dtype)
    lines = []
    kernels_warm.join(lines.append)
    assert torch.cuda.memory_allocated() <= before  # less when it released a cuBLAS workspace an earlier test made
    assert torch.equal(torch.cuda.get_rng_state(), generator)
    assert len(lines) == 1 and lines[0].startswith("kernels compiled in"), lines
    base = load_model(tmp_path, placement, four_bit=method == "qlora")
    base.config.use_cache = False
    patch_model(base, log=lambda m: None)
    model = with_lora(base)
    pack_adapters(model, log=lambda m: None)
    model.train()
    examples = examples_for([40, 50, 30])
    batch = padding_free(examples, 0, "cuda", segment_slots(examples, 3), most_tokens(examples, 3), [128])
    watch = warmup.CompileWatch()
    try:
        with torch.autocast("cuda", dtype=placement.torch_dtype):
            loss = model(**batch).loss
        loss.backward()
        torch.cuda.synchronize()
    finally:
        said = watch.stop()
    assert said == "kernels: the first step compiled no Triton kernel", said
    assert triton.knobs.runtime.jit_post_compile_hook is None


def test_compile_watch_names_what_was_compiled_and_gives_the_hook_back():
    """The first step's watch takes Triton's post-compile hook (calling on to one set before) and gives it back.
    Triton calls the hook after each compile on a GPU; here it is called as Triton calls it, by keyword."""
    import triton
    from triton.runtime.jit import JitFunctionInfo

    earlier = []

    def before(**kw):
        earlier.append(kw["fn"].name)

    triton.knobs.runtime.jit_post_compile_hook = before
    try:
        watch = warmup.CompileWatch()
        assert warmup.CompileWatch().stop() == "kernels: the first step compiled no Triton kernel"
        for name in ("_rope_fwd_kernel", "_swiglu_bwd_kernel"):
            triton.knobs.runtime.jit_post_compile_hook(fn=JitFunctionInfo(None, name, None), key=None)
        said = watch.stop()
        assert triton.knobs.runtime.jit_post_compile_hook is before and earlier == watch.names
    finally:
        triton.knobs.runtime.jit_post_compile_hook = None
    assert said == "kernels: the first step compiled 2 Triton kernel(s): _rope_fwd_kernel, _swiglu_bwd_kernel"
