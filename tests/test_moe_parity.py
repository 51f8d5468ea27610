"""Mixture-of-experts models (Qwen3-MoE, Mixtral, gpt-oss): the grouped expert path (engine.patching.moe) trains
exactly like transformers' own expert loop under PEFT, with adapters on attention and on every expert's projections.

Two copies of one tiny random-weight model take the same AdamW steps (fp32, CPU; the grouped kernel runs in Triton's
interpreter): losses, every LoRA gradient (attention and per-expert) and the final weights must agree. Full
fine-tuning compares the gradients of the fused expert weights themselves.
"""

import copy

import pytest
import torch
from test_patching_parity import assert_graph_steps_equal_eager_steps, assert_same_training, batch, train_steps
from tiny import ARCHS as TINY

from engine.models.experts import expert_parameters, router_names
from engine.patching import moe, patch_model
from kernels import dispatch

ARCHS = ["qwen3_moe", "mixtral", "gpt_oss"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on the CPU the kernels run in Triton's interpreter
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def tiny_model(arch: str, vocab: int = 96):
    """A tiny fp32 model; gpt-oss (attention sinks) has no SDPA attention in transformers, so it runs eager."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(TINY[arch], vocab_size=vocab)
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    attention = "eager" if arch == "gpt_oss" else "sdpa"
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation=attention).to(DEVICE)


def with_expert_lora(model, seed: int = 1):
    from peft import LoraConfig, get_peft_model

    targets = expert_parameters(model, ["gate_proj", "up_proj", "down_proj"])
    assert targets == ["experts.down_proj", "experts.gate_up_proj"]
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=ATTENTION, target_parameters=targets, lora_dropout=0.0)
    model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero B: every adapter gradient is live from the first step
            p.data = (torch.randn(p.shape, generator=gen) * 0.1).to(p.device, p.dtype)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_grouped_expert_path_matches_transformers_lora(arch):
    base = tiny_model(arch)
    fast_base = copy.deepcopy(base)
    assert moe.install(fast_base, log=lambda m: None) == base.config.num_hidden_layers
    assert base.config._experts_implementation != moe.IMPLEMENTATION  # only the patched copy's config changed
    assert isinstance(fast_base.model.layers[0].mlp, moe.FastMoEBlock)
    plain, fast = with_expert_lora(base), with_expert_lora(fast_base)
    assert moe._lora_factors(fast.base_model.model.model.layers[0].mlp.experts)[1].keys() == {
        "gate_up_proj",
        "down_proj",
    }  # the block hands PEFT's factors to the grouped path
    assert plain.state_dict().keys() == fast.state_dict().keys()
    expert_grads = [n for n, p in fast.named_parameters() if p.requires_grad and ".experts." in n]
    assert len(expert_grads) == 4 * base.config.num_hidden_layers  # A and B of gate_up and down, per layer
    with dispatch.force("triton"):
        assert_same_training(plain, fast, batch(96, DEVICE), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_grouped_expert_path_matches_transformers_full(arch):
    base = tiny_model(arch)
    fast = copy.deepcopy(base)
    moe.install(fast, log=lambda m: None)
    inputs = batch(96, DEVICE)
    grads = []
    for model in (base, fast):
        model.train()
        with dispatch.force("triton"):
            loss = model(**inputs).loss
        loss.backward()
        grads.append((loss.item(), {n: p.grad for n, p in model.named_parameters() if "experts" in n}))
    (loss_p, grads_p), (loss_f, grads_f) = grads
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-5, atol=1e-6)
    assert grads_p.keys() == grads_f.keys() and grads_p
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=2e-4, atol=2e-5, msg=name)


def test_router_is_found_beside_each_experts_module():
    model = tiny_model("gpt_oss")
    assert router_names(model) == [f"model.layers.{i}.mlp.router" for i in range(2)]
    assert router_names(tiny_model("qwen3_moe")) == [f"model.layers.{i}.mlp.gate" for i in range(2)]


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_patched_moe_family_matches_transformers(arch):
    """The whole fast path: attention, norms and the fused loss drop-ins plus the grouped experts."""
    base = tiny_model(arch)
    fast_base = copy.deepcopy(base)
    report = patch_model(fast_base, log=lambda m: None)
    layers = base.config.num_hidden_layers
    assert report.swapped["FastAttention"] == layers and "FastMLP" not in report.swapped
    assert report.swapped["fused cross-entropy loss"] == 1
    assert f"grouped expert path (kernels.grouped_mm) in {layers} mixture-of-experts layers" in report.notes
    plain, fast = with_expert_lora(base), with_expert_lora(fast_base)
    with dispatch.force("triton"):
        assert_same_training(plain, fast, batch(96, DEVICE), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])  # gpt-oss has no fast-path family: transformers' loss
def test_router_loss_is_added_to_the_fused_loss(arch):
    """With output_router_logits the model adds the load-balancing loss to .loss: the fused loss adds it too (the
    memory plan counts one chunk of logits for every fast-path run), and trains as transformers' loss does."""
    base = tiny_model(arch)
    base.config.output_router_logits = True
    base.router_aux_loss_coef = 0.5  # large enough that a dropped aux loss would show in every comparison below
    fast_base = copy.deepcopy(base)
    report = patch_model(fast_base, log=lambda m: None)
    assert report.swapped["fused cross-entropy loss"] == 1
    inputs = batch(96, DEVICE)
    with dispatch.force("triton"), torch.no_grad():
        reference = base(**inputs)
        assert fast_base(**inputs).logits is None  # the chunked loss ran
        base.config.output_router_logits = False
        without = base(**inputs).loss
        base.config.output_router_logits = True
    assert reference.aux_loss > 0
    torch.testing.assert_close(reference.loss - without, 0.5 * reference.aux_loss, rtol=1e-5, atol=1e-6)
    plain, fast = with_expert_lora(base), with_expert_lora(fast_base)
    with dispatch.force("triton"):
        assert_same_training(plain, fast, inputs, rtol=2e-4, atol=2e-5)


def test_lora_experts_off_and_router_trained_on_request():
    from engine.models.loading import add_lora
    from engine.spec.jobspec import JobSpec

    lines = []
    spec = JobSpec(model="tiny", data="rows.jsonl", lora_experts=False, train_router=True)
    model = add_lora(tiny_model("qwen3_moe"), spec, log=lines.append)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not [n for n in trainable if ".experts." in n]
    assert "base_model.model.model.layers.0.mlp.gate.modules_to_save.default.weight" in trainable
    assert "lora: mixture-of-experts: experts frozen, adapters on the other target modules only" in lines
    assert "lora: routers trained in full (['gate'])" in lines
    lines.clear()
    add_lora(tiny_model("qwen3_moe"), JobSpec(model="tiny", data="rows.jsonl"), log=lines.append)
    assert any(line.startswith("lora: mixture-of-experts: one adapter per expert on") for line in lines), lines
    assert not [line for line in lines if "experts frozen" in line], lines


def test_disabled_adapters_run_the_base_model():
    """disable_adapter() (DPO's reference model) goes through PEFT's wrappers, which then add nothing."""
    base = tiny_model("qwen3_moe")
    fast = copy.deepcopy(base)
    moe.install(fast, log=lambda m: None)
    fast = with_expert_lora(fast)
    inputs = batch(96, DEVICE)
    with dispatch.force("triton"), torch.no_grad():
        with fast.disable_adapter():
            off = fast(**inputs).loss
        on = fast(**inputs).loss
        plain = base(**inputs).loss
    torch.testing.assert_close(off, plain, rtol=1e-5, atol=1e-6)
    assert abs(on.item() - plain.item()) > 1e-3


def test_app_pipeline_on_moe_matches_transformers():
    """As engine.models.loading prepares a GPU run: patch_model, the job's LoRA (add_lora: attention and experts), the
    fast-path adapters packed into one tensor; against transformers + the same adapters."""
    from engine.models.loading import add_lora
    from engine.patching.modules import pack_adapters, packed_gradient
    from engine.spec.jobspec import JobSpec

    spec = JobSpec(model="tiny", data="rows.jsonl", lora_r=4, lora_alpha=8)
    base = tiny_model("qwen3_moe")
    fast_base = copy.deepcopy(base)
    patch_model(fast_base, log=lambda m: None)
    torch.manual_seed(1)
    plain = add_lora(base, spec, log=lambda m: None)
    torch.manual_seed(1)
    fast = add_lora(fast_base, spec, log=lambda m: None)
    for model in (plain, fast):
        gen = torch.Generator().manual_seed(3)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data = (torch.randn(p.shape, generator=gen) * 0.1).to(p.device, p.dtype)
    assert pack_adapters(fast, log=lambda m: None) == 2 * base.config.num_hidden_layers  # attention q/k/v and o
    inputs = batch(96, DEVICE)
    with dispatch.force("triton"):
        loss_f = fast(**inputs).loss
    loss_p = plain(**inputs).loss
    loss_f.backward()
    loss_p.backward()
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-5, atol=1e-6)
    grads_p = {n: p.grad for n, p in plain.named_parameters() if "lora_" in n}
    grads_f = {n: packed_gradient(p) for n, p in fast.named_parameters() if "lora_" in n}
    assert grads_p.keys() == grads_f.keys()
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=2e-4, atol=2e-5, msg=name)


@pytest.mark.parametrize("whole", [False, True])
@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss"])
def test_nf4_experts_train_like_their_dequantized_weights(arch, whole, monkeypatch):
    """QLoRA's NF4 experts: the patched model with NF4 expert storage trains like transformers whose expert weights
    are the NF4 round trip of the same weights, with the same adapters; also with each layer's stack dequantized at
    once (`whole`, a plan's expert_stack: every product one chunk of all the experts)."""
    import kernels.nf4_grouped_mm as grouped

    base = tiny_model(arch)
    fast_base = copy.deepcopy(base)
    moe.install(fast_base, log=lambda m: None)
    fast = with_expert_lora(fast_base)
    assert moe.quantize_experts(fast, log=lambda m: None) == 2 * base.config.num_hidden_layers
    for module in fast.modules():
        if hasattr(module, "nf4_states"):
            module.whole_stack = whole
    chunks, product = [], grouped.nf4_grouped_mm
    monkeypatch.setattr(grouped, "nf4_grouped_mm", lambda *a: chunks.append(a[-1]) or product(*a))
    experts = fast.base_model.model.model.layers[0].mlp.experts.base_layer.base_layer
    # the parameter keeps its shape for PEFT over one element of storage
    assert experts.gate_up_proj.untyped_storage().nbytes() == 4 and experts.gate_up_proj_nf4.dtype == torch.uint8
    with torch.no_grad():
        for layer, fast_layer in zip(base.model.layers, fast.base_model.model.model.layers, strict=True):
            inner = moe._innermost(fast_layer.mlp.experts)
            for name in ("gate_up_proj", "down_proj"):
                getattr(layer.mlp.experts, name).copy_(moe._weight(inner, name))
    plain = with_expert_lora(base)
    # One step: over three AdamW steps the routing of these NF4-rounded weights drifts (measured: 2.9e-4 of the
    # largest v_proj lora_B gradient at step 1, after step 0 agreed to 1.7e-6), as Adam turns fp32 noise into steps.
    with dispatch.force("triton"):
        (loss_p,), (grads_p,), _ = train_steps(plain, batch(96, DEVICE), steps=1)
        (loss_f,), (grads_f,), _ = train_steps(fast, batch(96, DEVICE), steps=1)
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-5, atol=1e-6)
    assert grads_p.keys() == grads_f.keys()
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=2e-4, atol=2e-5, msg=name)
    experts = base.config.num_local_experts if arch == "gpt_oss" else base.config.num_experts
    assert chunks and (set(chunks) == {experts} if whole else experts not in chunks)


def test_expert_rows_gather_and_their_gradients_gather_back():
    """moe.Rows: a token's k rows in expert order and back, values and gradients equal to plain indexing's (whose
    backward accumulates with atomic adds on the GPU; Rows' is a gather and a sum over each token's k rows)."""
    tokens, k = 7, 3
    gen = torch.Generator().manual_seed(0)
    flat = torch.stack([torch.randperm(5, generator=gen)[:k] for _ in range(tokens)]).reshape(-1)
    order = torch.argsort(flat, stable=True)
    slot = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel()))
    hidden = torch.randn(tokens, 4, generator=gen, requires_grad=True)
    rows = torch.randn(tokens * k, 4, generator=gen, requires_grad=True)
    for fn in (moe.Rows.apply, None):
        gathered = fn(hidden, order // k, slot, k) if fn else hidden[order // k]
        back = fn(rows, slot, order, 1) if fn else rows[slot]
        (gathered * torch.arange(gathered.numel()).view_as(gathered)).sum().backward()
        (back * torch.arange(back.numel()).view_as(back) ** 2).sum().backward()
        if fn:
            ours = gathered.detach(), back.detach(), hidden.grad, rows.grad
            hidden.grad = rows.grad = None
    for mine, plain in zip(ours, (gathered.detach(), back.detach(), hidden.grad, rows.grad), strict=True):
        torch.testing.assert_close(mine, plain, rtol=1e-6, atol=0)


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_an_empty_batch_goes_through_the_grouped_path(arch):
    """No tokens (a micro-batch of nothing): the grouped path returns an empty output and gradient, not an error."""
    model = tiny_model(arch)
    moe.install(model, log=lambda m: None)
    block = next(m for m in model.modules() if isinstance(m, moe.FastMoEBlock))
    hidden = torch.zeros(1, 0, model.config.hidden_size, requires_grad=True)
    out = block(hidden)
    out = out[0] if isinstance(out, tuple) else out
    out.sum().backward()
    assert out.shape == hidden.shape and hidden.grad.shape == hidden.shape


def test_moe_layers_are_captured_by_default_where_safe(monkeypatch):
    """CUDA graphs of MoE layers are on by default (TUNESMITH_MOE_GRAPHS=0 turns them off), never with router logits
    recorded for the load-balancing loss (hooks do not run in a replay), with Mixtral's input jitter, or under a plan
    that recomputes layers at its largest micro-batch."""
    from engine.patching import graphs

    def install(arch, per_shape=False, **config):
        model = tiny_model(arch)
        for key, value in config.items():
            setattr(model.config, key, value)
        patch_model(model, log=lambda m: None)
        if "router_jitter_noise" in config:  # the block read it from the config when it was built
            for layer in model.model.layers:
                layer.mlp.jitter_noise = config["router_jitter_noise"]
        lines = []
        return graphs.install(model, log=lines.append, per_shape=per_shape), lines

    monkeypatch.delenv("TUNESMITH_MOE_GRAPHS", raising=False)
    assert install("qwen3_moe")[0] is True and install("mixtral")[0] is True
    monkeypatch.setenv("TUNESMITH_MOE_GRAPHS", "0")
    assert install("qwen3_moe")[0] is False
    monkeypatch.setenv("TUNESMITH_MOE_GRAPHS", "1")
    assert install("qwen3_moe", output_router_logits=True)[0] is False
    assert install("mixtral", router_jitter_noise=0.1)[0] is False
    installed, lines = install("qwen3_moe", per_shape=True)
    assert installed is False and "captured only where the plan recomputes nothing" in lines[-1]


def test_nf4_experts_read_on_the_host_are_not_captured():
    """NF4 experts dequantized a chunk at a time read their groups' ends on the host, which a CUDA graph cannot
    capture (moe.reads_host); a layer's whole stack at once, or 16-bit copies of both expert tensors, read none."""
    base = tiny_model("qwen3_moe")
    moe.install(base, log=lambda m: None)
    model = with_expert_lora(base)
    blocks = [m for m in model.modules() if isinstance(m, moe.FastMoEBlock)]
    assert blocks and not any(moe.reads_host(b) for b in blocks)  # 16-bit experts
    moe.quantize_experts(model, log=lambda m: None)
    assert all(moe.reads_host(b) for b in blocks)
    inner = moe._innermost(blocks[0].experts)
    inner.dense_experts = {"gate_up_proj": moe._weight(inner, "gate_up_proj")}
    assert moe.reads_host(blocks[0])  # down_proj still dequantized a chunk at a time
    inner.dense_experts["down_proj"] = moe._weight(inner, "down_proj")
    assert not moe.reads_host(blocks[0])
    moe._innermost(blocks[1].experts).whole_stack = True
    assert not moe.reads_host(blocks[1])


@pytest.mark.gpu
def test_moe_graph_steps_equal_eager_steps(monkeypatch):
    """With MoE graphs (the default), bf16 on the GPU: three SGD steps of a qwen3_moe with LoRA on attention and experts
    replay captured layers (the grouped products, the row moves and the routing inside the graphs) and give the eager
    path's losses and LoRA gradients."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    from engine.patching import graphs

    monkeypatch.setenv("TUNESMITH_MOE_GRAPHS", "1")

    def load(graphed):
        model = tiny_model("qwen3_moe").to(torch.bfloat16)
        model.config.use_cache = False
        patch_model(model, log=lambda m: None)
        lines = []
        if graphed:
            assert graphs.install(model, log=lines.append)
        return with_expert_lora(model).train(), lines

    assert_graph_steps_equal_eager_steps(load, vocab=96)
