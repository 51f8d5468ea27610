"""Families whose decoder layers are not Llama's (engine.memory.configs reads those): their config.json keys named as
the common reader reads them, and each layer's nn.Linear modules by the names the model gives them (Arch.linears),
which LoRA's target_modules match.

    phi (Phi-1/2), starcoder2, gpt_neox (Pythia), falcon: a two-matrix MLP (fc1/fc2, c_fc/c_proj, dense_h_to_4h/
        dense_4h_to_h: no gate), LayerNorms with biases; GPT-NeoX and Falcon fuse q, k and v into query_key_value
    jamba: Mamba mixers in most layers, attention in every attn_layer_period-th; experts in every
        expert_layer_period-th layer, a dense MLP in the others; a Mamba layer's activations by its mixer's dims
    ernie4_5_moe: the usual layers, its experts named moe_num_experts, moe_k and moe_num_shared_experts

Each reader takes the config (with its family's defaults) and `common`, the common reader (configs._fields for a
config), and returns Arch's fields by name.
"""

import math


def _layerwise(fields: dict, layer: tuple) -> dict:
    return {**fields, "linears": (layer,) * fields["layers"]}


def phi(c: dict, common) -> dict:
    """Phi-1/1.5/2: q, k, v and dense (the output) with biases, fc1 and fc2 with biases; one LayerNorm a layer (the
    attention and the MLP read the same input), the final LayerNorm and the head with biases; q and k LayerNorms
    where qk_layernorm."""
    f = common({**c, "attention_bias": False})
    h, i, d = f["hidden"], f["intermediate"], f["head_dim"]
    q, kv = f["heads"] * d, f["kv_heads"] * d
    layer = (("q_proj", h, q), ("k_proj", h, kv), ("v_proj", h, kv), ("dense", q, h), ("fc1", h, i), ("fc2", i, h))
    per_layer = q + 2 * kv + h + i + h  # the biases; one LayerNorm's weight and bias are the two norms counted
    if c.get("qk_layernorm"):
        per_layer += 2 * 2 * (h // f["heads"])
    other = f["other_params"] + f["layers"] * per_layer + h + f["vocab"]  # final LayerNorm's bias, the head's bias
    return _layerwise({**f, "other_params": other}, layer)


def starcoder2(c: dict, common) -> dict:
    """StarCoder2: q, k, v and o, c_fc and c_proj (biases where use_bias); two LayerNorms a layer and a final one."""
    f = common({**c, "attention_bias": False})
    h, i, d = f["hidden"], f["intermediate"], f["head_dim"]
    q, kv = f["heads"] * d, f["kv_heads"] * d
    attention = (("q_proj", h, q), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", q, h))
    biases = q + 2 * kv + h + i + h if c.get("use_bias", True) else 0
    other = f["other_params"] + f["layers"] * (biases + 2 * h) + h  # the LayerNorms' biases
    return _layerwise({**f, "other_params": other}, (*attention, ("c_fc", h, i), ("c_proj", i, h)))


def gpt_neox(c: dict, common) -> dict:
    """GPT-NeoX (Pythia): query_key_value and dense (biases where attention_bias), dense_h_to_4h and dense_4h_to_h
    with biases; two LayerNorms a layer and a final one."""
    f = common({**c, "attention_bias": False, "num_key_value_heads": c["num_attention_heads"]})
    h, i = f["hidden"], f["intermediate"]
    biases = (4 * h if c.get("attention_bias", True) else 0) + i + h
    layer = (("query_key_value", h, 3 * h), ("dense", h, h), ("dense_h_to_4h", h, i), ("dense_4h_to_h", i, h))
    other = f["other_params"] + f["layers"] * (biases + 2 * h) + h
    return _layerwise({**f, "other_params": other}, layer)


def falcon(c: dict, common) -> dict:
    """Falcon: query_key_value holds every head's q and the k and v heads: one pair (multi_query, Falcon-7B), one a
    head (neither), num_kv_heads pairs (new_decoder_architecture, Falcon-40B/180B); dense, dense_h_to_4h and
    dense_4h_to_h; biases where `bias`. A layer has one LayerNorm, or two (not parallel_attn, or the new
    architecture's ln_attn and ln_mlp), with biases; the head has none."""
    h, heads = c["hidden_size"], c["num_attention_heads"]
    new = c.get("new_decoder_architecture")
    if new:
        kv = c.get("num_kv_heads") or heads
    else:
        kv = 1 if c.get("multi_query", True) else heads
    ffn = c.get("ffn_hidden_size") or 4 * h
    f = common({**c, "intermediate_size": ffn, "num_key_value_heads": kv, "head_dim": h // heads})
    qkv = (heads + 2 * kv) * (h // heads)
    layer = (("query_key_value", h, qkv), ("dense", h, h), ("dense_h_to_4h", h, ffn), ("dense_4h_to_h", ffn, h))
    parallel_norms = c.get("num_ln_in_parallel_attn") or (2 if new else 1)
    norms = 2 if not c.get("parallel_attn", True) or parallel_norms == 2 else 1
    biases = qkv + h + ffn + h if c.get("bias") else 0
    other = f["other_params"] + f["layers"] * (biases + 2 * h * norms - 2 * h) + h
    return _layerwise({**f, "other_params": other}, layer)


def jamba(c: dict, common) -> dict:
    """Jamba: a layer is attention (q, k, v, o) where i % attn_layer_period == attn_layer_offset, else a Mamba mixer
    (in_proj, x_proj, dt_proj, out_proj; a depthwise conv, A_log, D and three small norms); its MLP is experts where
    i % expert_layer_period == expert_layer_offset (the router an nn.Linear without bias), else dense."""
    layers, h = c["num_hidden_layers"], c["hidden_size"]
    period, offset = c.get("expert_layer_period", 2), c.get("expert_layer_offset", 1)
    experts = c.get("num_experts") or 1
    moe = [i for i in range(layers) if experts > 1 and i % period == offset]
    dense = [i for i in range(layers) if i not in moe]
    f = common({**c, "num_experts": experts if moe else 0, "decoder_sparse_step": 1, "mlp_only_layers": dense})
    d, i = f["head_dim"], f["intermediate"]
    q, kv = f["heads"] * d, f["kv_heads"] * d
    inner, state, conv = c.get("mamba_expand", 2) * h, c.get("mamba_d_state", 16), c.get("mamba_d_conv", 4)
    rank = c.get("mamba_dt_rank", "auto")
    rank = math.ceil(h / 16) if rank == "auto" else rank
    attention = (("q_proj", h, q), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", q, h))
    mamba = (("in_proj", h, 2 * inner), ("x_proj", inner, rank + 2 * state), ("dt_proj", rank, inner))
    mamba += (("out_proj", inner, h),)
    mixer = inner * conv + inner * state + inner + inner + rank + 2 * state  # conv, A_log, D, dt_proj's bias, norms
    mixer += inner * c.get("mamba_conv_bias", True) + (2 * inner + h) * c.get("mamba_proj_bias", False)
    mlp = (("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h))
    period, offset = c.get("attn_layer_period", 8), c.get("attn_layer_offset", 4)
    linears, other, mamba_ids = [], f["other_params"], []
    for index in range(layers):
        is_attention = index % period == offset
        other += 0 if is_attention else mixer
        mamba_ids += [] if is_attention else [index]
        linears.append((attention if is_attention else mamba) + (() if index in moe else mlp))
    fields = dict(linears=tuple(linears), mamba_ids=tuple(mamba_ids), mamba=(inner, state, rank))
    return {**f, "other_params": other, **fields}


def mamba_mixer_bytes(inner: int, state: int, rank: int, hidden: int) -> int:
    """Bytes per token a Mamba mixer (transformers' JambaMambaMixer, 16-bit activations) saves for its backward, by
    its d_inner, d_state and dt_rank. Without the mamba_ssm and causal_conv1d packages (not installed here)
    transformers runs its PyTorch scan, which keeps, per token: the discretized A and B (fp32, d_inner x d_state
    each) and the state after each token (fp32, and its 16-bit copy for the output product): 14 x d_inner x d_state;
    in_proj's output (2 x d_inner), the convolution's input, and five more 16-bit d_inner-wide tensors (the
    convolution's output, the scan's output with the D skip, the gate's SiLU, their product, and a second copy of the
    convolution's output the scan's reshapes make), and the time step before and after its softplus (fp32):
    24 x d_inner; the norms of dt, B and C (fp32 copies of their inputs, 16-bit copies and dt's and C's outputs, and
    B's fp32 copy for the scan): 8 x dt_rank + 18 x d_state, and 12 bytes of their rsqrt; in_proj's 16-bit input,
    2 x hidden. d_conv's few extra columns are per sequence, not per token. Measured with saved-tensor hooks on a tiny
    Jamba (tests/test_memory_families.py); the backward's own working set (the scan's fp32 gradients) is not in it."""
    return 14 * inner * state + 24 * inner + 8 * rank + 18 * state + 12 + 2 * hidden


def ernie4_5_moe(c: dict, common) -> dict:
    """ERNIE 4.5 MoE: experts in layer i where (i + 1) % moe_layer_interval == 0 and moe_layer_start_index <= i <=
    moe_layer_end_index (-1: the last), beside moe_num_shared_experts shared ones; each router has a per-expert score
    bias (moe_statics); every linear and the head have biases where use_bias."""
    layers = c["num_hidden_layers"]
    experts = c.get("moe_num_experts") or 0
    start, end = c.get("moe_layer_start_index", 1), c.get("moe_layer_end_index", -1)
    end = layers - 1 if end in (None, -1) else end
    interval = c.get("moe_layer_interval") or 1
    moe = [i for i in range(layers) if experts and (i + 1) % interval == 0 and start <= i <= end]
    f = common(
        {
            **c,
            "num_experts": experts if moe else 0,
            "num_experts_per_tok": c.get("moe_k"),
            "n_shared_experts": c.get("moe_num_shared_experts") or 0,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [i for i in range(layers) if i not in moe],
            "attention_bias": False,
        }
    )
    other = f["other_params"] + len(moe) * experts  # the routers' score biases
    if c.get("use_bias"):
        h, d, shared = f["hidden"], f["head_dim"], f["shared_intermediate"]
        attention = (f["heads"] + 2 * f["kv_heads"]) * d + h
        other += layers * attention + (layers - len(moe)) * (2 * f["intermediate"] + h) + f["vocab"]
        other += len(moe) * (2 * shared + h if shared else 0)
    return {**f, "other_params": other}


FAMILIES = {f.__name__: f for f in (phi, starcoder2, gpt_neox, falcon, jamba, ernie4_5_moe)}  # by model_type
