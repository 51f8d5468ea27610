"""engine/chat/decode_batch.py (batch) on tiny random-weight models (fp32, CPU): each row's greedy reply equals
the one-row decoder's, with ragged prompts, a repeated prompt, rows that stop early, a LoRA adapter live, and rows of
base and tuned side by side; seeded sampling draws per row as a one-row reply does; the step's Triton kernels
(interpreter) in batched form. GPU tests (pytest -m gpu) compare bf16 against transformers' generate."""

import pytest
import torch
from test_decode_step import folders, hf_greedy, load, load_nf4, with_lora  # noqa: F401  (folders is a fixture)
from test_infer import common_prefix, qwen3_06b  # noqa: F401  (qwen3_06b is a fixture)

from engine.chat.decode import Decoder, Sampling
from engine.chat.decode_batch import batch

PROMPTS = [[5, 17, 42, 99, 7, 250, 31, 64], [9, 8, 7], [5, 17, 42, 99, 7, 250, 31, 64], [300, 12, 77, 41, 6]]
N = 10


def per_row(decoder, prompts, n, stop=(), adapters=None, sampling=Sampling()):
    adapters = adapters or [True] * len(prompts)
    return [list(decoder.tokens(p, n, sampling, stop, a)) for p, a in zip(prompts, adapters, strict=True)]


def batched(decoder, prompts, n, stop=(), adapter=True, sampling=Sampling(), keep_stop=False):
    rows = [[] for _ in prompts]
    for step in batch(decoder, prompts, n, sampling, stop, adapter, keep_stop):
        assert len(step) == len(prompts)
        for row, token in zip(rows, step, strict=True):
            if token is not None:
                row.append(token)
    return rows


def early_stops(replies) -> set[int]:
    """A stop token that ends the first reply after 3 tokens (and any other reply where it occurs)."""
    return {replies[0][3]} if replies[0][3] not in replies[0][:3] else {replies[0][2]}


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mistral", "qwen2", "gemma2"])
def test_batched_greedy_equals_per_row_greedy(folders, arch):  # noqa: F811
    model = with_lora(load(folders(arch)))
    lines = []
    decoder = Decoder(model, log=lines.append)
    stop = early_stops(per_row(decoder, PROMPTS, N))
    want = per_row(decoder, PROMPTS, N, stop)
    assert len(want[0]) < N and any(len(r) == N for r in want)  # one row stops early, another runs to the end
    assert batched(decoder, PROMPTS, N, stop) == want
    assert want[0] == want[2]  # the repeated prompt (its cache copied, not recomputed)
    one_by_one = any("one row after another" in line for line in lines)
    assert one_by_one == (decoder.path != "step")  # gemma2's sliding windows: transformers generate, row by row


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_base_and_tuned_rows_side_by_side(folders, arch):  # noqa: F811
    """adapter=[True, False, ...]: a base row is the base model's reply, a tuned row the adapter's, in one batch."""
    model = with_lora(load(folders(arch)))
    decoder = Decoder(model, log=lambda m: None)
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[3]]
    adapters = [True, False, False, True]
    want = per_row(decoder, prompts, N, adapters=adapters)
    assert want[0] != want[1]  # the adapter changes the reply
    assert batched(decoder, prompts, N, adapter=adapters) == want
    with model.disable_adapter():
        assert want[1] == hf_greedy(model, torch.tensor([PROMPTS[0]]), N)


def test_keep_stop_yields_the_stop_token_and_the_row_ends(folders):  # noqa: F811
    decoder = Decoder(with_lora(load(folders("qwen3"))), log=lambda m: None)
    stop = early_stops(per_row(decoder, PROMPTS, N))
    rows = batched(decoder, PROMPTS, N, stop, keep_stop=True)
    dropped = batched(decoder, PROMPTS, N, stop)
    assert rows[0][-1] in stop and rows[0][:-1] == dropped[0] and len(rows[0]) == 4
    assert all(r == d or (r[:-1] == d and r[-1] in stop) for r, d in zip(rows, dropped, strict=True))


def test_seeded_sampling_draws_per_row_as_one_row_does(folders):  # noqa: F811
    decoder = Decoder(with_lora(load(folders("llama"))), log=lambda m: None)
    sampling = Sampling(temperature=1.0, top_p=0.9, top_k=50, min_p=0.01, repetition_penalty=1.2, seed=7)
    want = per_row(decoder, PROMPTS, N, sampling=sampling)
    assert batched(decoder, PROMPTS, N, sampling=sampling) == want
    assert want[0] == want[2]  # the same seed and prompt: the same draw


def test_unseeded_sampling_in_a_batch_follows_the_distribution():
    """The batched pick draws each row from its own distribution (the exponential race, row by row)."""
    from engine.chat.decode import pick

    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.0, 0.1, 0.3, 0.6]])
    torch.manual_seed(0)
    draws = torch.cat([pick(probs.log().repeat(2000, 1), Sampling(temperature=1.0), None) for _ in range(5)], 1)
    counts = torch.stack([torch.bincount(draws[r::2].reshape(-1), minlength=4) for r in range(2)]).float()
    torch.testing.assert_close(counts / counts.sum(1, keepdim=True), probs, atol=0.01, rtol=0)


def test_batched_step_on_the_triton_kernels(folders):  # noqa: F811
    """The batched step as the GPU runs it (rope_kv_cache and decode_attention with a row axis, in the interpreter)."""
    model = with_lora(load(folders("qwen3")))
    decoder = Decoder(model, log=lambda m: None)
    decoder.step.backend = "triton"
    n = 4  # the interpreter takes ~0.3 s a step on this model
    prompts = [PROMPTS[0], PROMPTS[1]]
    want = per_row(decoder, prompts, n, adapters=[True, False])
    assert batched(decoder, prompts, n, adapter=[True, False]) == want


def test_nf4_batched_step_on_the_triton_kernels(folders):  # noqa: F811
    """An NF4 base (fp32 compute) on the step's Triton kernels: kernels/nf4_matvec.py's one-row kernel for each token
    of a reply, its rows kernel for the batched tokens and the short prompts; each row's greedy reply equals the
    one-row decoder's, and the first also transformers' generate over bitsandbytes."""
    model = with_lora(load_nf4(folders("qwen3")))
    decoder = Decoder(model, log=lambda m: None)
    decoder.step.backend = "triton"
    assert decoder.step.layers[0].o.kind == "nf4"
    n = 4
    prompts = [PROMPTS[0], PROMPTS[1]]
    want = per_row(decoder, prompts, n, adapters=[True, False])
    assert batched(decoder, prompts, n, adapter=[True, False]) == want
    assert want[0] == hf_greedy(model, torch.tensor([PROMPTS[0]]), n)


def test_a_second_generation_waits_for_the_first(folders):  # noqa: F811
    decoder = Decoder(load(folders("llama")), log=lambda m: None)
    first = batch(decoder, PROMPTS, N)
    next(first)
    with pytest.raises(RuntimeError, match="already generating"):
        list(decoder.tokens(PROMPTS[0], 2))
    first.close()
    assert len(list(decoder.tokens(PROMPTS[0], 2))) == 2


# ---- GPU (pytest -m gpu on the device machine) ----


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_batched_bf16_agrees_with_transformers_generate(qwen3_06b):  # noqa: F811
    """bf16 on qwen3-0.6b's shape (random weights): the batched graph replays equal the batched eager steps token for
    token, and each row follows fp32 transformers about as far as transformers' own bf16 batched generate does
    (random-weight logits are near-ties; see test_infer.test_gpu_step_agrees_with_transformers_bf16)."""
    import copy

    model, _ = qwen3_06b
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 30000, (n,), generator=gen).tolist() for n in (128, 40, 128, 77, 5, 100, 64, 90)]
    n = 64
    graph = Decoder(model, log=lambda m: None)
    assert graph.path == "step" and graph.mode == "graph"
    ours = batched(graph, prompts, n)
    eager = Decoder(model, log=lambda m: None, mode="eager")
    assert batched(eager, prompts, n) == ours
    exact = copy.deepcopy(model).float()
    mine, theirs = [], []
    for p, row in zip(prompts, ours, strict=True):
        ids = torch.tensor([p], device="cuda")
        ref = hf_greedy(exact, ids, n)
        mine.append(common_prefix(row, ref))
        theirs.append(common_prefix(hf_greedy(model, ids, n), ref))
    assert sum(mine) >= 0.75 * sum(theirs), f"tokens equal to fp32's per prompt: ours {mine}, transformers {theirs}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_batched_nf4_with_lora_graph_equals_eager(qwen3_06b):  # noqa: F811
    """An NF4 base with a live LoRA adapter, base and tuned rows mixed and seeded sampling: the batched graph replays
    equal the batched eager steps (bitsandbytes' own matmul for B rows, captured), and the base rows differ from
    the tuned ones."""
    from test_infer import nf4_model, with_random_lora

    model = with_random_lora(nf4_model(qwen3_06b[1]))
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 30000, (n,), generator=gen).tolist() for n in (128, 128, 60, 60)]
    adapters = [True, False, True, False]
    graph = Decoder(model, log=lambda m: None)
    eager = Decoder(model, log=lambda m: None, mode="eager")
    for sampling in (Sampling(), Sampling(temperature=0.8, top_p=0.95, seed=3)):
        ours = batched(graph, prompts, 48, adapter=adapters, sampling=sampling)
        assert graph.mode == "graph"
        assert batched(eager, prompts, 48, adapter=adapters, sampling=sampling) == ours
        assert ours[0] != ours[1] and ours[2] != ours[3]
