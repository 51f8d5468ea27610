"""The decode step's fused inputs (kernels/fused_matvec.py; engine.chat.decode_step's Group.normed and
Projection.after_swiglu) against TUNESMITH_DECODE_FUSE=0, on tiny random-weight models (fp32, CPU) of each family our
step serves, with a LoRA adapter live: the same greedy replies, one row and batched, with the pure-torch references
(bit for bit) and on the Triton kernels in the interpreter, where one token's step launches the fused kernel in place
of the norms and the SwiGLU."""

import pytest
import torch
from launches import recorded
from test_decode_batch import PROMPTS, batched, early_stops, per_row
from test_decode_step import folders, load, with_lora  # noqa: F401  (folders is a fixture)

from engine.chat.decode import CACHE_ROUND, Decoder

FAMILIES = ["llama", "qwen2", "qwen3", "mistral"]  # engine.chat.decode_step.FAMILIES
N = 8


def decoder(folder, fuse: bool, monkeypatch, triton: bool = False) -> Decoder:
    monkeypatch.setenv("TUNESMITH_DECODE_FUSE", "1" if fuse else "0")
    torch.manual_seed(0)  # the same adapter for both (with_lora seeds lora_B only; PEFT draws lora_A)
    made = Decoder(with_lora(load(folder)), log=lambda m: None)
    assert made.path == "step" and made.step.fuse is fuse
    if triton:
        made.step.backend = "triton"
    return made


def one_token(fused, plain):
    """Both steps over a prompt, then one token: (fused logits, plain logits, the fused prompt's launches, the fused
    token's launches)."""
    prompt, ids, position = torch.tensor(PROMPTS[0]), torch.tensor([5]), torch.tensor([[len(PROMPTS[0])]])
    out = []
    with torch.inference_mode():
        for d in (fused, plain):
            d.step.allocate(CACHE_ROUND)
            with recorded() as prompt_launches:
                d.step.forward(prompt, torch.zeros(1, dtype=torch.long))
            with recorded() as token_launches:
                out.append((d.step.forward(ids, position), prompt_launches, token_launches))
    return out[0][0], out[1][0], out[0][1], out[0][2]


@pytest.mark.parametrize("arch", FAMILIES)
def test_fused_greedy_replies_are_todays_on_the_cpu(folders, arch, monkeypatch):  # noqa: F811
    """With the references (the CPU's backend) the fused path computes the unfused ops: the same logits bit for bit,
    so the same replies, one row and batched, tuned and base rows side by side, rows stopping early."""
    fused, plain = (decoder(folders(arch), fuse, monkeypatch) for fuse in (True, False))
    stop = early_stops(per_row(plain, PROMPTS, N))
    adapters = [True, False, True, False]
    assert per_row(fused, PROMPTS, N, stop, adapters) == per_row(plain, PROMPTS, N, stop, adapters)
    assert batched(fused, PROMPTS, N, stop, adapters) == batched(plain, PROMPTS, N, stop, adapters)
    fused_logits, plain_logits, _, launches = one_token(fused, plain)
    torch.testing.assert_close(fused_logits, plain_logits, rtol=0, atol=0)
    assert not launches  # no Triton kernel ran


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])  # q/k/v biases, q/k norms; llama and mistral: neither
def test_fused_step_on_the_triton_kernels_gives_the_same_replies(folders, arch, monkeypatch):  # noqa: F811
    """The step as the GPU runs it (interpreter): Qwen2's q/k/v biases, Qwen3's q/k norms, LoRA on every projection
    (its terms read the v the fused kernel stores) and off: the fused step's tokens are the unfused step's, and its
    logits within fp32 rounding of them. One token launches the fused kernel (the first input norm without a
    residual, the others with one, the SwiGLU) and no swiglu kernel; a prompt launches the unfused kernels."""
    fused, plain = (decoder(folders(arch), fuse, monkeypatch, triton=True) for fuse in (True, False))
    n = 3  # the interpreter takes ~0.3 s a step on these models
    for on in (True, False):
        assert per_row(fused, PROMPTS[:2], n, adapters=[on, on]) == per_row(plain, PROMPTS[:2], n, adapters=[on, on])
    fused_logits, plain_logits, prompt, token = one_token(fused, plain)
    torch.testing.assert_close(fused_logits, plain_logits, rtol=1e-5, atol=1e-5)
    names = [launch.name for launch in token]
    assert "_swiglu_fwd_kernel" not in names and "_add_rms_norm_kernel" in names  # the final norm
    assert names.count("_fused_matvec_kernel") >= 3  # distinct specializations: no residual, residual, SwiGLU
    assert "_fused_matvec_kernel" not in {launch.name for launch in prompt}
