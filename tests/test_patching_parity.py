"""The fast path (engine.patching) trains exactly like plain transformers + PEFT, family by family.

Two copies of the same tiny random-weight model, one patched, both with the same LoRA adapters (B made non-zero so
every adapter gradient is live from the first step), take the same optimizer steps on a padded batch with masked
labels: losses, every LoRA gradient and the final LoRA weights must agree to fp32 precision. On the CPU the kernels
run in Triton's interpreter (conftest sets TRITON_INTERPRET=1).
"""

import copy

import pytest
import torch
from tiny import ARCHS

from engine.patching import patch_model
from engine.patching.modules import pack_adapters, packed_gradient

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_model(arch: str, vocab: int = 96, dtype=torch.float32, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(ARCHS[arch], vocab_size=vocab, **overrides)
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")


def with_lora(model, seed: int = 1):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # PEFT draws A from the global generator
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = (torch.randn(p.shape, generator=gen) * 0.1).to(p.device, p.dtype)
    return model


def batch(vocab: int, device="cpu"):
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, vocab, (2, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding on the second row
    labels = ids.clone()
    labels[:, :4] = -100  # prompt tokens carry no loss
    labels[mask == 0] = -100
    return dict(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))


def lora_state(model):
    """PEFT's adapter weights by name (packed or not: pack_adapters keeps them as views of the packed tensors)."""
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def packed(model):
    assert pack_adapters(model, log=lambda m: None) == 4 * model.config.num_hidden_layers
    return model


def train_steps(model, inputs, steps: int = 3, lr: float = 1e-2, optimizer=torch.optim.AdamW, autocast=None):
    """Losses, per-step LoRA gradients and final LoRA weights of `steps` optimizer steps. `autocast`, a dtype,
    wraps each forward as a training loop does (one context per step: autocast caches its casts of the weights)."""
    import contextlib

    # Train mode, as a training loop runs. In eval mode, on a CPU with AVX512-BF16, a bitsandbytes Linear4bit whose
    # input needs no gradient (layer 0's q/k/v: the embedding is frozen) repacks its weight for its bf16 CPU kernel
    # (kernels.nf4.cpu_repacked): the plain QLoRA model's losses then differ by 1.2e-2 relative (measured).
    model.train()
    opt = optimizer([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses, grads = [], []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=autocast) if autocast else contextlib.nullcontext():
            loss = model(**inputs).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({n: packed_gradient(p).clone() for n, p in lora_state(model).items()})
        opt.step()
        opt.zero_grad()
    return losses, grads, {n: p.detach().clone() for n, p in lora_state(model).items()}


def assert_same_training(plain, fast, inputs, rtol, atol):
    initial = {n: p.detach().clone() for n, p in lora_state(plain).items()}
    losses_p, grads_p, final_p = train_steps(plain, inputs)
    losses_f, grads_f, final_f = train_steps(fast, inputs)
    torch.testing.assert_close(torch.tensor(losses_f), torch.tensor(losses_p), rtol=rtol, atol=atol)
    for step, (gp, gf) in enumerate(zip(grads_p, grads_f, strict=True)):
        assert gp.keys() == gf.keys()
        for name in gp:
            torch.testing.assert_close(gf[name], gp[name], rtol=rtol, atol=atol, msg=f"step {step} grad {name}")
    # Final weights, allowing besides rtol/atol 2% of each element's own update. Adam's first step moves an element
    # by lr * g / (|g| + eps), so a gradient near eps turns fp32 noise into a visible step: measured on gemma, the
    # step-0 gradient of one v_proj lora_A element is 3.74e-7 plain vs 3.12e-7 patched (within atol), and its final
    # weights differ by 5.0e-5, 0.8% of its update (no element of gemma's adapters is further off, relative to its
    # update; the other families stay within rtol/atol). A step not applied is off by 100%.
    for name in final_p:
        diff = (final_f[name] - final_p[name]).abs()
        allowed = atol + rtol * final_p[name].abs() + 0.02 * (final_p[name] - initial[name]).abs()
        assert (diff <= allowed).all(), f"{name}: final weights differ by up to {diff.max().item():.2e}"


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("pack", [True, False], ids=["packed", "unpacked"])
def test_patching_parity_lora_fp32(arch, pack):
    """pack: the adapters packed as engine.training.sft's loop packs them; unpacked: as the TRL-based objectives run."""
    base = tiny_model(arch)
    fast_base = copy.deepcopy(base)
    report = patch_model(fast_base, log=lambda m: None)
    assert report.family is not None
    layers = base.config.num_hidden_layers
    assert report.swapped["FastAttention"] == layers and report.swapped["FastMLP"] == layers
    assert report.swapped["FastRMSNorm"] >= 2 * layers + 1
    assert report.swapped["fused cross-entropy loss"] == 1
    plain, fast = with_lora(base), with_lora(fast_base)
    assert plain.state_dict().keys() == fast.state_dict().keys()  # adapters save and load under the same names
    if pack:
        fast = packed(fast)
    assert_same_training(plain, fast, batch(base.config.vocab_size), rtol=1e-4, atol=1e-5)


def test_patching_parity_qlora_nf4():
    """A 4-bit NF4 base (real bitsandbytes, CPU backend): the fused LoRA op dequantizes through kernels.nf4."""
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    spec = dict(ARCHS["llama"], vocab_size=96)
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    dense = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)

    def load(tmp):
        dense.save_pretrained(tmp)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
        return AutoModelForCausalLM.from_pretrained(
            tmp, quantization_config=quant, dtype=torch.float32, attn_implementation="sdpa"
        )

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        plain_base, fast_base = load(tmp), load(tmp)
    patch_model(fast_base, log=lambda m: None)
    assert_same_training(with_lora(plain_base), packed(with_lora(fast_base)), batch(96), rtol=1e-4, atol=1e-5)


def test_packed_adapters_save_and_load_as_peft_adapters(tmp_path):
    """Packed adapters save as PEFT's usual adapter file (the same names and values), a plain PEFT model loads it,
    and loading an adapter state dict into a packed model (a resumed checkpoint) writes into the packed tensors."""
    from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    def fast_model():
        model = tiny_model("qwen3")
        patch_model(model, log=lambda m: None)
        return packed(with_lora(model))

    fast = fast_model()
    train_steps(fast, batch(96), steps=1)  # weights move: they must be saved from the packed tensors
    trained = {n: p.detach().clone() for n, p in lora_state(fast).items()}
    fast.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved.keys() == get_peft_model_state_dict(fast).keys() and not any("packed_adapters" in k for k in saved)
    plain = PeftModel.from_pretrained(tiny_model("qwen3"), tmp_path)
    for name, value in lora_state(plain).items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0, msg=name)
    with torch.no_grad():  # a forward without gradients (a checkpointed layer's first pass) also reads the packing
        torch.testing.assert_close(fast(**batch(96)).loss, plain(**batch(96)).loss, rtol=1e-5, atol=1e-6)

    resumed = fast_model()
    set_peft_model_state_dict(resumed, saved)
    for name, value in lora_state(resumed).items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0, msg=name)
    packed_values = [n for n, p in resumed.named_parameters() if p.requires_grad]
    assert packed_values == ["packed_adapters"]  # the optimizer steps one tensor
    for name, p in lora_state(resumed).items():
        flat, start = p.packed_in
        assert flat.data_ptr() + start * flat.element_size() == p.data_ptr(), name  # still a view, not a copy


def test_packed_adapters_accumulate_into_one_gradient_buffer():
    """The model's one trainable tensor gathers every fused op's gradient: backwards accumulate into it, and after an
    optimizer drops it (zero_grad(set_to_none=True)) its memory is freed for the next forward and the backward
    starts again from zero in the same tensor."""
    model = tiny_model("qwen3")
    patch_model(model, log=lambda m: None)
    model = packed(with_lora(model)).train()
    flat = model.get_parameter("packed_adapters")
    assert [p for p in model.parameters() if p.requires_grad] == [flat]
    assert flat.numel() == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    inputs = batch(96)
    model(**inputs).loss.backward()
    first = flat.grad.clone()
    assert first.abs().min() > 0  # every adapter weight has its gradient there
    model(**inputs).loss.backward()
    torch.testing.assert_close(flat.grad, 2 * first)
    buffer = flat.grad
    torch.optim.SGD([flat], lr=0.0).zero_grad(set_to_none=True)
    assert flat.grad is None
    loss = model(**inputs).loss
    assert buffer.untyped_storage().size() == 0  # no gradient memory through the forward
    loss.backward()
    assert flat.grad is buffer
    torch.testing.assert_close(flat.grad, first)


def test_packed_adapters_with_the_adapter_off_or_another_active():
    """With the adapter disabled (DPO's reference) a packed model is its base; with another adapter made active, a
    training forward says the packed tensors no longer match instead of training them silently wrong."""
    from peft import LoraConfig

    base = tiny_model("qwen3")
    patch_model(base, log=lambda m: None)
    inputs = batch(96)
    with torch.no_grad():
        expected = base(**inputs).loss
    model = packed(with_lora(base)).train()
    with model.disable_adapter():
        torch.testing.assert_close(model(**inputs).loss, expected)
    model.add_adapter("other", LoraConfig(r=2, target_modules=TARGETS))
    model.set_adapter("other")
    with pytest.raises(RuntimeError, match="packed LoRA adapters"):
        model(**inputs)


def test_packed_adapters_follow_their_tensor_when_its_data_is_replaced():
    """TRL's SFTTrainer casts a 4-bit model's trainable weights with `param.data = param.data.to(torch.bfloat16)`, and
    tunesmith's fp16 models cast them back to fp32 the same way (new memory each time): the packed model must then
    train as one whose packed tensor was rounded in place. Before PackedAdapters.follow the fused ops kept reading the
    old memory while the optimizer stepped the new one: the loss never moved (6.7794 at every step, measured)."""

    def fast_model():
        model = tiny_model("qwen3")
        patch_model(model, log=lambda m: None)
        return packed(with_lora(model))

    in_place, replaced = fast_model(), fast_model()
    flat = in_place.get_parameter("packed_adapters")
    flat.data.copy_(flat.data.to(torch.bfloat16).float())  # the same values, in the same memory
    flat = replaced.get_parameter("packed_adapters")
    flat.data = flat.data.to(torch.bfloat16)  # TRL's cast
    flat.data = flat.data.float()  # tunesmith.model's fp16 restore
    losses_i, grads_i, final_i = train_steps(in_place, batch(96))
    losses_r, grads_r, final_r = train_steps(replaced, batch(96))
    assert losses_r[-1] < losses_r[0]
    torch.testing.assert_close(torch.tensor(losses_r), torch.tensor(losses_i), rtol=0, atol=0)
    for step, (gi, gr) in enumerate(zip(grads_i, grads_r, strict=True)):
        for name in gi:
            torch.testing.assert_close(gr[name], gi[name], rtol=0, atol=0, msg=f"step {step} grad {name}")
    for name, p in lora_state(replaced).items():  # PEFT's weights (saved adapters, the decoder) are the trained ones
        torch.testing.assert_close(final_r[name], final_i[name], rtol=0, atol=0, msg=name)
        assert flat.data_ptr() + p.packed_in[1] * flat.element_size() == p.data_ptr(), name

    bf16 = fast_model()  # TRL's cast alone (a bf16 GPU's QLoRA run): the adapters train in bf16
    flat = bf16.get_parameter("packed_adapters")
    flat.data = flat.data.to(torch.bfloat16)
    losses, _, final = train_steps(bf16, batch(96))
    assert losses[-1] < losses[0] and flat.grad is None and {t.dtype for t in final.values()} == {torch.bfloat16}


def test_patching_parity_packed_sequences():
    """A packed row (per-example positions, block-diagonal mask) gives the loss of its examples run separately."""
    from engine.data.batching import padded as collate
    from engine.data.tokenizing import Example

    model = tiny_model("qwen3")
    patch_model(model, log=lambda m: None)
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randint(3, 96, (7,), generator=gen).tolist(), torch.randint(3, 96, (5,), generator=gen).tolist()
    la, lb = [-100, -100, *a[2:]], [-100, *b[1:]]
    packed = Example(input_ids=a + b, labels=la + lb, segments=[7, 5])
    inputs = collate([packed], pad_id=0, device="cpu")
    with torch.no_grad():
        loss_packed = model(**inputs).loss
        sep = [model(input_ids=torch.tensor([x]), labels=torch.tensor([y])).loss for x, y in ((a, la), (b, lb))]
    # The packed loss averages over all valid tokens; weight the separate losses by their token counts.
    n_a, n_b = sum(t != -100 for t in la[1:]), sum(t != -100 for t in lb[1:])
    torch.testing.assert_close(loss_packed, (sep[0] * n_a + sep[1] * n_b) / (n_a + n_b), rtol=1e-5, atol=1e-6)


def test_patching_parity_past_the_native_window():
    """Positions far past max_position_embeddings (a 32768-token run of a model made for 8192) rotate exactly as
    transformers rotates them: the fast path takes the model's own cos/sin and changes no RoPE setting."""
    base = tiny_model("llama", rope_theta=500000.0, max_position_embeddings=8192)
    fast = copy.deepcopy(base)
    patch_model(fast, log=lambda m: None)
    ids = torch.randint(3, 96, (1, 32), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(0, 32768, 1024).unsqueeze(0)  # spread: RoPE sees relative distances up to 31744
    with torch.no_grad():
        plain = base(input_ids=ids, labels=ids, position_ids=positions).loss
        patched = fast(input_ids=ids, labels=ids, position_ids=positions).loss
    torch.testing.assert_close(patched, plain, rtol=1e-6, atol=0)


def test_patching_leaves_other_families_on_the_plain_path():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("gpt2", n_embd=32, n_layer=1, n_head=2, vocab_size=64)
    model = AutoModelForCausalLM.from_config(cfg)
    lines = []
    report = patch_model(model, log=lines.append)
    assert report.family is None and report.swapped == {}
    assert "no fast path for model type 'gpt2'" in lines[0]


def test_patched_model_generates_like_the_plain_one():
    """Without labels the patched forward is the model's own: generation with a KV cache matches greedy tokens."""
    base = tiny_model("qwen3")
    fast = copy.deepcopy(base)
    patch_model(fast, log=lambda m: None)
    ids = torch.tensor([[5, 9, 13, 21]])
    out_plain = base.generate(ids, max_new_tokens=8, do_sample=False)
    out_fast = fast.generate(ids, max_new_tokens=8, do_sample=False)
    assert out_fast.tolist() == out_plain.tolist()


@pytest.mark.gpu
@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("four_bit", [False, True], ids=["lora", "qlora"])
def test_patching_parity_gpu_bf16(arch, four_bit, tmp_path):
    """bf16 on the GPU at a realistic width, under autocast as training runs. bf16 rounds differently on the two
    paths (the fused ops round once where transformers rounds after each op), so both are measured against the same
    plain model run in fp32. First step: the fast path's loss and every LoRA gradient within twice plain bf16's error
    (plus a small floor). Over three large SGD steps both bf16 runs drift from the fp32 one chaotically (measured on
    the H100: up to 3% for transformers' own path on Gemma 3), so there each fast loss must stay within three times
    transformers' drift plus 1% of the loss. SGD, not Adam: Adam's first steps move every weight by about
    the learning rate whatever its gradient's size, turning rounding noise in near-zero gradients into real steps."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    width = dict(
        hidden_size=1024,
        intermediate_size=2816,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=64,
        initializer_range=0.02,  # a real model's scale: losses near log(vocab), not the tiny models' sharp ones
    )
    tiny_model(arch, vocab=32000, dtype=torch.bfloat16, **width).save_pretrained(tmp_path)

    def load(dtype, patched=False):
        kw = dict(dtype=dtype, attn_implementation="sdpa", device_map={"": 0})
        if four_bit:
            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
            )
        model = AutoModelForCausalLM.from_pretrained(tmp_path, **kw)
        if patched:
            patch_model(model, log=lambda m: None)
            return packed(with_lora(model))
        return with_lora(model)

    inputs = batch(32000, device="cuda")
    kw = dict(steps=4, lr=1.0, optimizer=torch.optim.SGD)
    losses_r, grads_r, _ = train_steps(load(torch.float32), inputs, **kw)
    losses_p, grads_p, _ = train_steps(load(torch.bfloat16), inputs, autocast=torch.bfloat16, **kw)
    losses_f, grads_f, _ = train_steps(load(torch.bfloat16, patched=True), inputs, autocast=torch.bfloat16, **kw)
    assert losses_r[-1] < losses_r[0]  # the steps are large enough to train
    assert abs(losses_f[0] - losses_r[0]) <= 2 * abs(losses_p[0] - losses_r[0]) + 1e-3 * losses_r[0]
    for r, p, f in zip(losses_r, losses_p, losses_f, strict=True):
        assert abs(f - r) <= 3 * abs(p - r) + 1e-2 * r, f"losses: fp32 {losses_r}, hf {losses_p}, fast {losses_f}"

    def off(grad, ref):
        return 1 - torch.nn.functional.cosine_similarity(grad.flatten().float(), ref.flatten(), dim=0).item()

    for name, ref in grads_r[0].items():
        fast, plain = off(grads_f[0][name], ref), off(grads_p[0][name], ref)
        assert fast <= 2 * plain + 1e-3, f"{name}: 1-cos fast {fast:.2e}, hf {plain:.2e}"


def test_cuda_graphs_only_for_layers_they_can_replay():
    """Graph capture needs attention without a mask: Llama/Qwen3 layers qualify; sliding windows and Gemma 2's soft
    cap do not, nor an unpatched model."""
    from engine.patching import graphs

    for arch, expected in (("llama", True), ("qwen3", True), ("gemma2", False), ("gemma3", False)):
        model = tiny_model(arch)
        patch_model(model, log=lambda m: None)
        assert graphs.install(model, log=lambda m: None) is expected, arch
    assert graphs.install(tiny_model("llama"), log=lambda m: None) is False


@pytest.mark.gpu
@pytest.mark.parametrize("four_bit", [False, True], ids=["lora", "qlora"])
def test_cuda_graph_steps_equal_eager_steps(four_bit, tmp_path):
    """The captured layers replay the same kernels: three SGD steps give the eager path's losses and LoRA gradients
    (to cuBLAS's choice of algorithm inside a capture), and the graphs were really used."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from engine.patching import graphs

    width = dict(hidden_size=512, intermediate_size=1408, num_attention_heads=8, num_key_value_heads=4, head_dim=64)
    tiny_model("qwen3", vocab=32000, dtype=torch.bfloat16, initializer_range=0.02, **width).save_pretrained(tmp_path)

    def load(graphed):
        kw = dict(dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": 0})
        if four_bit:
            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
        model = AutoModelForCausalLM.from_pretrained(tmp_path, **kw)
        model.config.use_cache = False  # as training sets it: a KV cache keeps layers off the graphs
        patch_model(model, log=lambda m: None)
        lines = []
        if graphed:
            assert graphs.install(model, log=lines.append)
        return packed(with_lora(model)).train(), lines  # graphs replay only in training

    assert_graph_steps_equal_eager_steps(load, vocab=32000)


def assert_graph_steps_equal_eager_steps(load, vocab: int):
    """Three bf16 SGD steps of `load(False)` and `load(True)` ((model, log lines) each: without and with the layers'
    CUDA graphs) on one unmasked batch: the graphs were captured, and the losses and LoRA gradients agree."""
    ids = torch.randint(3, vocab, (2, 64), generator=torch.Generator().manual_seed(0)).cuda()
    inputs = dict(input_ids=ids, labels=ids)  # no attention mask: a masked step runs its layers eagerly
    kw = dict(steps=3, lr=0.1, optimizer=torch.optim.SGD, autocast=torch.bfloat16)
    eager, _ = load(False)
    graphed, lines = load(True)
    losses_e, grads_e, _ = train_steps(eager, inputs, **kw)
    losses_g, grads_g, _ = train_steps(graphed, inputs, **kw)
    assert any("captured" in line for line in lines), lines
    torch.testing.assert_close(torch.tensor(losses_g), torch.tensor(losses_e), rtol=1e-3, atol=0)
    for step in range(3):
        for name in grads_e[step]:
            torch.testing.assert_close(grads_g[step][name], grads_e[step][name], rtol=2e-2, atol=1e-5, msg=name)


@pytest.mark.gpu
def test_a_size_of_one_micro_batch_is_never_captured(tmp_path):
    """The training loop names the run's sizes that one micro-batch has (engine.data.batching.used_once): such a
    step runs eagerly even as the run's first, and the next size is then captured at its second step."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    from transformers import AutoModelForCausalLM

    from engine.patching import graphs

    width = dict(hidden_size=512, intermediate_size=1408, num_attention_heads=8, num_key_value_heads=4, head_dim=64)
    tiny_model("qwen3", vocab=32000, dtype=torch.bfloat16, initializer_range=0.02, **width).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map={"": 0})
    model.config.use_cache = False
    patch_model(model, log=lambda m: None)
    lines = []
    assert graphs.install(model, log=lines.append)
    model = packed(with_lora(model)).train()
    model.get_base_model().eager_tokens.add(2 * 64)

    def step(tokens):
        ids = torch.randint(3, 32000, (2, tokens), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()

    step(64), step(64)
    assert not any("captured" in line for line in lines), lines
    step(32), step(32), step(32)
    assert [line for line in lines if "captured" in line and "(2, 32)" in line] and len(lines) == 1, lines


def test_cuda_graphs_are_captured_per_shape_after_an_eager_step():
    """The first training step's shape is captured at once; any other shape (a padding-free bucket) at its second
    step, after an eager one; a step that cannot use graphs keeps them; at most MAX_SHAPES are held, the least
    recently used dropped."""
    from engine.patching.graphs import MAX_SHAPES, Captures

    held, a, b = Captures(), ("shape a",), ("shape b",)
    assert held.before_step(a) is True  # the first step: capture
    held.graphs[a] = ["graphs"]
    assert held.before_step(a) is False and held.graphs  # replayed, kept
    assert held.before_step(None) is False and a in held.graphs  # a step with a mask runs eagerly; graphs kept
    assert [held.before_step(b), held.before_step(b)] == [False, True]  # eagerly once, then captured
    held.graphs[b] = ["graphs"]
    others = [(f"shape {i}",) for i in range(MAX_SHAPES)]
    for key in others:
        assert [held.before_step(key), held.before_step(key)] == [False, True]
        held.graphs[key] = ["graphs"]
        assert len(held.graphs) <= MAX_SHAPES
    assert list(held.graphs) == others[-MAX_SHAPES:]
    late = Captures()
    assert late.before_step(None) is False and late.before_step(a) is False  # the first step had a mask
    assert late.before_step(a) is True
    off = Captures()
    off.enabled = False  # a capture failed: the run goes on without new graphs
    assert off.before_step(a) is False
