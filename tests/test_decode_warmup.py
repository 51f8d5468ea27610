"""engine.chat.warmup: the decoder's kernels compiled while the weights load are the ones its first reply launches.

The CPU check is Triton's own key, as in tests/test_warmup.py: in Triton's interpreter every launch of a tiny model's
decode step (a prompt, one token, and a batched step when the warm-up is asked for rows) is turned into the key under
which a CUDA build of Triton (sm_90) compiles it (tests/launches.py's `recorded`: signature, constexprs, alignment and
divisibility, launch options), and the warm-up's `kernel.warmup` calls into the same keys; none of the step's may be
missing. The GPU test (run on the GPU machine) checks the same end to end: after the warm-up a fresh Decoder's first
reply compiles no Triton kernel (Triton's post-compile hook).
"""

import contextlib

import pytest
import torch
from launches import recorded
from test_decode_step import folders, load, load_nf4, with_lora  # noqa: F401  (folders: fixture)
from tiny import ARCHS

from engine.chat import warmup
from engine.chat.decode import CACHE_ROUND, Decoder
from engine.chat.decode_step import DecodeStep
from engine.models.loading import read_config
from kernels import dispatch, target

pytest.importorskip("triton.runtime.interpreter")
interpreted = pytest.mark.skipif(not dispatch.INTERPRET, reason="needs TRITON_INTERPRET=1 (no CUDA GPU)")
PROMPT = torch.arange(5, 25)  # 20 tokens: an NF4 prompt this long takes bitsandbytes' matmul, as a chat's does
STEP_KERNELS = {"_add_rms_norm_kernel", "_rope_kv_cache_kernel", "_decode_attention_kernel"}  # one split here: no merge
STEP_KERNELS |= {"_swiglu_fwd_kernel", "_matvec_kernel"}

QWEN3_4B = dict(  # Qwen3-4B's config.json sizes
    model_type="qwen3",
    hidden_size=2560,
    intermediate_size=9728,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    use_sliding_window=False,
    sliding_window=None,
)


def step_launches(model, rows: int) -> set:
    """The launches of a Triton-backed step of `model`: a prompt, one token, and with `rows` a batched prompt and
    step over `rows` rows."""
    step = DecodeStep(model.get_base_model() if hasattr(model, "get_base_model") else model)
    step.backend = "triton"
    step.allocate(CACHE_ROUND)
    with recorded() as seen, torch.inference_mode():
        step.forward(PROMPT, torch.zeros(1, dtype=torch.long))
        step.forward(torch.tensor([3]), torch.tensor([[PROMPT.numel()]]))
        if rows:
            step.allocate(CACHE_ROUND, rows=rows)
            for row in range(rows):
                step.prefill_row(PROMPT[row:], row)
            step.forward_rows(torch.full((rows,), 3), torch.full((rows,), PROMPT.numel()))
    return seen


@interpreted
@pytest.mark.parametrize(
    "arch, four_bit, rows, dtype, emulated",
    [
        ("qwen3", False, 2, torch.float32, False),
        ("llama", False, 0, torch.bfloat16, False),
        ("qwen2", False, 2, torch.float32, False),
        ("qwen3", True, 2, torch.float32, False),
        ("qwen3", True, 2, torch.float32, True),
    ],
)
def test_warmup_covers_the_decoders_kernels(folders, arch, four_bit, rows, dtype, emulated, monkeypatch):  # noqa: F811
    """Qwen3's q/k norms and tied head, Llama's untied head in bf16, Qwen2's q/k/v biases and an NF4 base with a
    LoRA adapter: every specialization their decode step launches, one row and batched, is one the warm-up compiles;
    the NF4 kernels' launch options (dot precision, FMA fusion) also as an sm_90 GPU gets them (kernels.target).
    With the fused inputs on (TUNESMITH_DECODE_FUSE=1), whose kernels the warm-up must then compile instead."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("TUNESMITH_DECODE_FUSE", "1")

    folder = folders(arch)
    if four_bit:
        model = with_lora(load_nf4(folder))
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        for p in model.parameters():  # loaded in the file's dtype on the CPU, a weight is a view of the mapped file
            p.data = p.data.clone()  # at any 2-byte offset; on a GPU each is an allocation of its own (aligned)
    gpu = target.emulate(target.Target(90, 232448)) if emulated else contextlib.nullcontext()
    with gpu:
        step = step_launches(model, rows)
        shapes = warmup.DecodeShapes.from_config(read_config(folder), four_bit, (rows,) if rows else ())
        with recorded(run=False) as warmed:
            done = warmup.compile_kernels(shapes, dtype, torch.device("cpu"))
    names = {launch.name for launch in step}
    # one token of a 16-bit model: the norms and SwiGLU inside the packed matvecs (kernels/fused_matvec.py)
    expected = STEP_KERNELS | (
        {"_nf4_group_matvec_kernel", "_nf4_matvec_kernel"} if four_bit else {"_fused_matvec_kernel"}
    )
    assert names == expected
    assert {name.split()[0] for name in done} >= {"add_rms_norm", "matvec", "decode_attention", "swiglu"}
    missed = sorted(launch.label() for launch in step - warmed)
    assert not missed, f"the first reply compiles {len(missed)} kernel(s) the warm-up did not: {missed}"


@interpreted
def test_the_check_sees_a_missing_specialization(folders):  # noqa: F811
    """Warmed without the batched rows, the batched step's rope (its ROW constexpr) is missing: the check above would
    see a warm-up that missed it."""
    folder = folders("qwen3")
    step = step_launches(load(folder), 2)
    with recorded(run=False) as warmed:
        warmup.compile_kernels(warmup.DecodeShapes.from_config(read_config(folder)), torch.float32, torch.device("cpu"))
    assert {launch.name for launch in step - warmed} == {"_rope_kv_cache_kernel"}


def counts(jobs) -> dict:
    found = {}
    for _, kernel, _, _ in jobs:
        found[kernel.fn.__name__] = found.get(kernel.fn.__name__, 0) + 1
    return found


def test_what_is_warmed_for_qwen3_4b_in_bf16_and_nf4(monkeypatch):
    """At Qwen3-4B's sizes: the two norms (with and without a residual), one rope, decode attention for both classes
    of its split count and its merge for each of its widths, one swiglu (a prompt's), the fused matvecs of one token
    (q/k/v with and without a residual, gate/up, down) and matvecs for o and the head in bf16 with
    TUNESMITH_DECODE_FUSE=1; with it 0 (the default) a matvec per packed weight instead; with an NF4 base q/k/v and
    gate/up take one group launch, o and down one launch each, one row and 2."""
    monkeypatch.setenv("TUNESMITH_DECODE_FUSE", "1")
    bf16 = warmup.launches(warmup.DecodeShapes.from_config(QWEN3_4B), torch.bfloat16, torch.device("cpu"))
    assert counts(bf16) == {
        "_add_rms_norm_kernel": 2,
        "_rope_kv_cache_kernel": 1,
        "_decode_attention_kernel": 2,
        "_merge_kernel": 4,
        "_swiglu_fwd_kernel": 1,
        "_fused_matvec_kernel": 4,
        "_matvec_kernel": 2,
    }
    head = [kw for _, kernel, args, kw in bf16 if kernel.fn.__name__ == "_matvec_kernel" and args[5] == 151936]
    assert head and (head[0]["BLOCK_N"], head[0]["BLOCK_K"]) == (4, 512)  # kernels.matvec.MEASURED's config
    gate_up = [kw for _, kernel, args, kw in bf16 if kernel.fn.__name__ == "_fused_matvec_kernel" and args[8] == 19456]
    assert gate_up and (gate_up[0]["BLOCK_N"], gate_up[0]["BLOCK_K"]) == (8, 512)  # the plain matvec's tile
    monkeypatch.setenv("TUNESMITH_DECODE_FUSE", "0")
    plain = counts(warmup.launches(warmup.DecodeShapes.from_config(QWEN3_4B), torch.bfloat16, torch.device("cpu")))
    assert plain["_matvec_kernel"] == 5 and "_fused_matvec_kernel" not in plain
    nf4 = warmup.launches(warmup.DecodeShapes.from_config(QWEN3_4B, True, (2,)), torch.bfloat16, torch.device("cpu"))
    found = counts(nf4)
    assert found["_matvec_kernel"] == 1 and found["_rope_kv_cache_kernel"] == 2  # the head; one row and batched
    # q/k/v's and gate/up's one-row tiles differ (block_n 4 and 16); at 2 rows both take the same 32-row tiles and
    # integer classes, so Triton compiles one kernel for both; o and down: one row (down's K is not a whole number
    # of steps) and 2 rows (one)
    assert found["_nf4_group_matvec_kernel"] == 3 and found["_nf4_matvec_kernel"] == 3
    assert all(a.device.type == "cpu" for _, _, args, _ in nf4 for a in args if isinstance(a, torch.Tensor))


def test_shapes_from_configs():
    """Qwen2's q/k/v biases, Llama's attention and MLP biases, a pre-quantized NF4 checkpoint's own double
    quantization, and rows."""
    qwen2 = warmup.DecodeShapes.from_config(dict(ARCHS["qwen2"], vocab_size=96))
    assert qwen2.qkv_bias and not qwen2.o_bias and not qwen2.mlp_bias and qwen2.sizes.nf4 is None
    llama = warmup.DecodeShapes.from_config(dict(ARCHS["llama"], vocab_size=96, attention_bias=True, mlp_bias=True))
    assert llama.qkv_bias and llama.o_bias and llama.mlp_bias
    quant = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False}
    stored = warmup.DecodeShapes.from_config(dict(QWEN3_4B, quantization_config=quant), rows=[8, 1, 8])
    assert stored.sizes.nf4 is False and stored.rows == (8,)
    assert warmup.DecodeShapes.from_config(QWEN3_4B, four_bit=True).sizes.nf4 is True


@pytest.mark.parametrize(
    "cfg, note",
    [
        (dict(ARCHS["gemma2"], vocab_size=96), "model type 'gemma2' has no decode step of ours"),
        (dict(ARCHS["llama"], vocab_size=96, hidden_act="gelu"), "MLP activation 'gelu'"),
        (dict(ARCHS["mistral"], vocab_size=96, sliding_window=4096), "mistral with sliding-window attention"),
        (dict(ARCHS["qwen2"], vocab_size=96, sliding_window=4096, use_sliding_window=False), None),
        (dict(ARCHS["llama"], vocab_size=96, rope_scaling={"rope_type": "longrope"}), "RoPE type 'longrope'"),
    ],
)
def test_which_models_our_step_runs(cfg, note):
    assert warmup.blocker(cfg) == note


def joined(kernels_warm) -> list[str]:
    lines = []
    kernels_warm.join(lines.append)
    kernels_warm.join(lines.append)  # said once
    return lines


def test_no_warmup_on_the_cpu_and_the_chat_says_so_once(tiny_llama):
    """On the CPU it starts nothing; a chat on the CPU logs why at its first reply, once."""
    from engine.chat.infer import ChatModel

    kernels_warm = warmup.start(read_config(tiny_llama), "cpu", torch.float32)
    assert kernels_warm.thread is None
    assert joined(kernels_warm) == [
        "decode kernels: no warm-up (the model loads to cpu, where the decoder runs the kernels' pure-torch references)"
    ]
    lines = []
    chat = ChatModel(str(tiny_llama), device="cpu", log=lines.append)
    for _ in range(2):
        chat.reply([{"role": "user", "content": "hi"}], max_new_tokens=2)
    assert sum(line.startswith("decode kernels: no warm-up") for line in lines) == 1


@interpreted
@pytest.mark.parametrize(
    "env, cfg, note",
    [
        ({"TUNESMITH_DECODE_WARMUP": "0"}, ARCHS["llama"], "TUNESMITH_DECODE_WARMUP=0"),
        ({"TUNESMITH_DECODE_KERNELS": "0"}, ARCHS["llama"], "TUNESMITH_DECODE_KERNELS=0: transformers' own forward"),
        (
            {},
            ARCHS["gemma2"],
            "model type 'gemma2' has no decode step of ours: the decoder runs transformers' own code",
        ),
    ],
)
def test_no_warmup_where_none_of_our_kernels_will_run(env, cfg, note, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert joined(warmup.start(dict(cfg, vocab_size=96), "cuda:0", torch.bfloat16)) == [
        f"decode kernels: no warm-up ({note})"
    ]


def test_no_warmup_with_the_reference_kernels():
    with dispatch.force("reference"):
        lines = joined(warmup.start(dict(ARCHS["llama"], vocab_size=96), "cuda", torch.bfloat16))
    assert len(lines) == 1 and lines[0].startswith("decode kernels: no warm-up (the kernels run their pure-torch")


def test_an_unreadable_config_starts_nothing(tmp_path):
    assert joined(warmup.start_for(tmp_path, "cuda", torch.bfloat16)) == [
        "decode kernels: no warm-up (config.json unreadable: FileNotFoundError)"
    ]


@interpreted
def test_a_failing_warmup_is_logged_and_the_reply_goes_on(folders, monkeypatch):  # noqa: F811
    """An exception inside the warm-up is logged with its traceback at the first reply, which then decodes as
    without it; nothing is raised."""

    def broken(*args):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(warmup, "launches", broken)
    folder = folders("llama")
    shapes = warmup.DecodeShapes.from_config(read_config(folder))
    kernels_warm = warmup.Warmup(
        shapes, torch.float32, torch.device("cpu"), work=warmup.compile_kernels, words=warmup.WORDS
    )
    lines = []
    model = load(folder)
    decoder = Decoder(model, log=lines.append, warmup=kernels_warm)
    reference = Decoder(model, log=lambda m: None)
    assert list(decoder.tokens(PROMPT, 3)) == list(reference.tokens(PROMPT, 3))
    failed = [i for i, line in enumerate(lines) if "the warm-up failed" in line]
    assert len(failed) == 1 and "Traceback" in lines[failed[0] - 1] and "no compiler here" in lines[failed[0] - 1]
    assert lines[failed[0]].startswith("decode kernels: the warm-up failed after")
    assert lines[failed[0]].endswith("(RuntimeError: no compiler here); the first reply compiles the kernels")
    list(decoder.tokens(PROMPT, 2))
    assert sum("the warm-up failed" in line for line in lines) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("four_bit", [False, True])
def test_after_the_warmup_the_first_reply_compiles_nothing(four_bit, tmp_path):
    """On the GPU, as the Chat tab loads a model (engine.models.loading.load_model, bf16, or NF4 with double
    quantization): the warm-up started from config.json compiles every kernel a fresh Decoder's first reply (a
    40-token prompt, then 8 tokens through the captured step) and a 2-row batch launch, and loads them (their
    launchers built): Triton's post-compile hook sees no compile in them, its load hook no kernel loaded. The warm-up
    holds no tensor memory after it and logs its line at the first reply."""
    import triton
    from test_patching_parity import tiny_model

    from engine.chat.decode_batch import batch
    from engine.core.hardware import choose_placement
    from engine.models.loading import load_model
    from engine.patching.warmup import CompileWatch

    size = dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=16, num_key_value_heads=8, head_dim=64)
    tiny_model("qwen3", vocab=4096, dtype=torch.bfloat16, **size).save_pretrained(tmp_path)
    placement = choose_placement("cuda")
    before = torch.cuda.memory_allocated()
    kernels_warm = warmup.start_for(tmp_path, placement.device, placement.torch_dtype, four_bit, rows=(2,))
    assert kernels_warm.thread is not None, joined(kernels_warm)  # else it says why it did not start
    kernels_warm.thread.join()  # the compiles end before the check below starts counting
    assert torch.cuda.memory_allocated() == before  # stand-ins on the CPU: no GPU memory taken from the load
    model = load_model(tmp_path, placement, four_bit=four_bit).eval()
    lines = []
    decoder = Decoder(model, log=lines.append, warmup=kernels_warm)
    prompt = torch.arange(100, 140).tolist()
    watch = CompileWatch()
    loaded, hooked = [], triton.knobs.runtime.kernel_load_start_hook  # a kernel's first launch loads it (its launcher)
    triton.knobs.runtime.kernel_load_start_hook = lambda *args: loaded.append(args[2])
    try:
        with torch.inference_mode():
            assert len(list(decoder.tokens(prompt, 8))) == 8
            assert sum(1 for _ in batch(decoder, [prompt, prompt[:33]], 4)) == 4
        torch.cuda.synchronize()
    finally:
        said = watch.stop()
        triton.knobs.runtime.kernel_load_start_hook = hooked
    assert decoder.mode == "graph" and decoder.path == "step", lines
    warmed = [line for line in lines if line.startswith("decode kernels")]
    assert len(warmed) == 1 and warmed[0].startswith("decode kernels compiled in"), lines
    assert watch.names == [], said
    assert loaded == [], f"the first reply loaded kernels the warm-up compiled but did not load: {loaded}"
    assert triton.knobs.runtime.jit_post_compile_hook is None


def test_a_failed_compile_raises_after_the_others_and_is_not_kept(monkeypatch):
    """compile_kernels runs each kernel's specializations in one pool task, each a plain synchronous
    `kernel.warmup` (so a failure leaves no future in the kernel's cache, as Triton's AsyncCompileMode would): one
    kernel whose compile fails raises once every task has finished, and the other kernel's compiles all ran."""
    calls = []

    class Kernel:
        def __init__(self, name, fails=False):
            self.name, self.fails = name, fails

        def warmup(self, *args, grid, **kw):
            calls.append((self.name, args))
            if self.fails:
                raise RuntimeError(f"{self.name} failed to compile")

    good, bad = Kernel("good"), Kernel("bad", fails=True)
    jobs = [("good", good, (1,), {}), ("bad", bad, (1,), {}), ("good", good, (2,), {}), ("bad", bad, (2,), {})]
    monkeypatch.setattr(warmup, "launches", lambda s, dtype, device: jobs)
    with pytest.raises(RuntimeError, match="bad failed to compile"):
        warmup.compile_kernels(None, torch.bfloat16, torch.device("cpu"))
    assert ("good", (1,)) in calls and ("good", (2,)) in calls  # the other kernel's compiles all ran
    assert calls.count(("bad", (1,))) == 1 and ("bad", (2,)) not in calls  # its task stopped at its failure
    calls.clear()
    jobs[:] = [job for job in jobs if job[0] == "good"]
    assert warmup.compile_kernels(None, torch.bfloat16, torch.device("cpu")) == ["good x2"]


def test_kernels_that_share_a_name_or_a_kernel_all_compile_and_report(monkeypatch):
    """Jobs name kernels by their module ("matvec": its matvec and its split-K reduce), and one kernel can serve several
    names (kernels.matvec's split-K reduce under "matvec" and the NF4 matvecs): a failure in any kernel of a name
    raises, every compile is counted under its name, and a kernel's compiles run in one task (one thread at a time)."""
    import threading

    calls, threads = [], {}

    class Kernel:
        def __init__(self, name, fails=False):
            self.name, self.fails = name, fails

        def warmup(self, *args, grid, **kw):
            calls.append((self.name, args))
            threads.setdefault(self.name, set()).add(threading.get_ident())
            if self.fails:
                raise RuntimeError(f"{self.name} failed to compile")

    main, reduce = Kernel("main", fails=True), Kernel("reduce")
    jobs = [("matvec", main, (1,), {}), ("matvec", reduce, (1,), {}), ("nf4_matvec", reduce, (2,), {})]
    monkeypatch.setattr(warmup, "launches", lambda s, dtype, device: jobs)
    with pytest.raises(RuntimeError, match="main failed to compile"):  # not lost behind "matvec"'s other kernel
        warmup.compile_kernels(None, torch.bfloat16, torch.device("cpu"))
    assert len(threads["reduce"]) == 1  # the shared kernel's two specializations in one task
    main.fails = False
    assert warmup.compile_kernels(None, torch.bfloat16, torch.device("cpu")) == ["matvec x2", "nf4_matvec"]


def test_a_chat_whose_load_fails_stops_its_warmup(tiny_llama, monkeypatch):
    """ChatModel starts the warm-up before the weights load; where the load fails no Decoder will ever join it, so
    the load's error is raised only once the warm-up has stopped (after its current compile), not with its compiles
    still running behind the app's next load."""
    import threading

    from engine.chat.infer import ChatModel
    from engine.models import loading

    running, stop_seen = threading.Event(), []

    def work(shapes, dtype, device, stop, done):
        running.set()
        while not stop():  # a compile after another until told to stop
            threading.Event().wait(0.01)
        stop_seen.append(True)

    started = []

    def start_for(path, device, dtype, four_bit=False, rows=()):
        started.append(warmup.Warmup("shapes", torch.float32, torch.device("cpu"), work=work, words=warmup.WORDS))
        running.wait(5)
        return started[-1]

    def broken(*args, **kw):
        raise OSError("weights unreadable")

    monkeypatch.setattr(warmup, "start_for", start_for)
    monkeypatch.setattr(loading, "load_model", broken)
    with pytest.raises(OSError, match="weights unreadable"):
        ChatModel(str(tiny_llama), device="cpu", log=lambda m: None)
    assert stop_seen == [True] and started[0].thread is None
