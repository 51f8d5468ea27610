"""An Arch's numbers (engine.memory.estimate) read from a transformers config.json, with the defaults its family's
config class gives the keys it leaves out."""

from engine.core.errors import UserError
from engine.memory.families import FAMILIES


def arch_fields(cfg: dict, with_vision: bool = True) -> dict:
    """Arch's fields, by name, for a config.json (Arch.from_config). A UserError where it lacks a number they need:
    families that name them otherwise (GPT-2's n_embd, BLOOM's n_head) are not read."""
    try:
        return _fields(with_defaults(cfg), with_vision)
    except KeyError as e:
        kind = (cfg.get("text_config") or cfg).get("model_type") or cfg.get("model_type") or "unnamed"
        raise UserError(
            f"The memory plan cannot read this model's architecture: its config.json ({kind}) has no {e}, so its "
            "memory cannot be planned and it cannot be trained here; use a model of a family it reads (Llama, "
            "Mistral, Qwen, Gemma, Phi, StarCoder2, GPT-NeoX, Falcon, Jamba, ERNIE 4.5, DeepSeek, Mixtral, gpt-oss)."
        ) from None


def _fields(cfg: dict, with_vision: bool, family: bool = True) -> dict:
    text = cfg.get("text_config") or cfg
    kind = text.get("model_type") or cfg.get("model_type", "")
    if family and kind in FAMILIES:  # a layout of its own, read in its terms
        return FAMILIES[kind](text, lambda named: _fields(named, with_vision, family=False))
    h, heads, layers = text["hidden_size"], text["num_attention_heads"], text["num_hidden_layers"]
    kv = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or h // heads
    experts = text.get("num_experts") or text.get("num_local_experts") or text.get("n_routed_experts") or 0
    ids = ()
    if not experts:
        moe = 0
    elif "decoder_sparse_step" in text or "mlp_only_layers" in text:  # Qwen2/3-MoE: some layers stay dense
        step, dense = text.get("decoder_sparse_step") or 1, set(text.get("mlp_only_layers") or ())
        ids = tuple(i for i in range(layers) if i not in dense and (i + 1) % step == 0)
        moe = len(ids)
    else:  # Mixtral, gpt-oss: every layer; DeepSeek: all but the first first_k_dense_replace
        moe = layers - (text.get("first_k_dense_replace") or 0)
    mixed = ids if experts and 0 < moe < layers else ()
    expert_width = text.get("moe_intermediate_size") or text["intermediate_size"]
    # Qwen2-MoE's shared expert, or DeepSeek's n_shared_experts (one MLP of their summed width)
    shared = text.get("shared_expert_intermediate_size") or (text.get("n_shared_experts") or 0) * expert_width
    q, kvw = heads * head_dim, kv * head_dim
    other = moe * experts * (h + (kind == "gpt_oss"))  # each MoE layer's router (gpt-oss's has a bias)
    if kind == "gpt_oss":
        other += layers * heads  # a learned attention sink per head
    if text.get("shared_expert_intermediate_size"):
        other += moe * h  # the shared expert's gate (Qwen2-MoE; DeepSeek's has none)
    latent = ()
    if text.get("kv_lora_rank"):
        latent = (text.get("q_lora_rank") or 0, text["kv_lora_rank"], text["qk_nope_head_dim"])
        latent += (text["qk_rope_head_dim"], text["v_head_dim"])
        other += layers * (latent[0] + latent[1])  # the norms of the compressed q and kv
    if kind.startswith("qwen2"):  # q, k and v have biases
        other += layers * (q + 2 * kvw)
    elif text.get("attention_bias"):
        other += layers * (q + 2 * kvw + h)
    if kind in ("qwen3", "qwen3_moe", "gemma3", "gemma3_text"):  # per-head q and k norms
        other += layers * 2 * head_dim
    if kind.startswith(("gemma2", "gemma3")):  # two more norms a layer (before and after the MLP)
        other += layers * 2 * h
    vision = cfg.get("vision_config")
    if with_vision and vision and loads_vision(cfg.get("model_type", "")):
        other += vision_params(vision, h)
    tied = next((t for t in (cfg.get("tie_word_embeddings"), text.get("tie_word_embeddings")) if t is not None), True)
    return dict(
        hidden=h,
        intermediate=text.get("intermediate_size") or expert_width,
        layers=layers,
        heads=heads,
        kv_heads=kv,
        head_dim=head_dim,
        vocab=text["vocab_size"],
        tied=bool(tied),
        experts=experts,
        expert_intermediate=expert_width if experts else 0,
        moe_layers=moe,
        experts_per_token=text.get("num_experts_per_tok") or text.get("experts_per_token") or 0,
        shared_intermediate=shared,
        expert_biases=kind == "gpt_oss",
        other_params=other,
        model_type=kind,
        moe_ids=mixed,
        latent=latent,
    )


def loads_vision(model_type: str) -> bool:
    """Whether the model the run loads (transformers' causal-LM class for this model type) holds the vision tower:
    Gemma 3's ForConditionalGeneration does; Llama 3.2 Vision's (mllama) MllamaForCausalLM is the text model alone.
    A type transformers does not map keeps its tower counted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    return name is None or name.endswith("ForConditionalGeneration")


def with_defaults(cfg: dict) -> dict:
    """config.json with its family's defaults (its transformers config class's) where it leaves a key out, as
    transformers loads it: a saved config omits values equal to them (gemma-3-4b-it's text_config has no vocab_size;
    a llama config without tie_word_embeddings is untied), and values the class derives from others follow this
    config's (Falcon's ffn_hidden_size is 4 x its hidden_size, not the default's). A family transformers does not
    know stays as written."""
    from transformers import AutoConfig

    try:
        defaults = AutoConfig.for_model(cfg["model_type"]).to_dict()
    except (KeyError, ValueError):  # no model_type, or remote code
        return cfg
    try:
        loaded = AutoConfig.for_model(**cfg).to_dict()
    except Exception:  # noqa: BLE001  a value the class refuses: the keys as written, over the defaults
        loaded = {}
    full = {**defaults, **cfg, **loaded}
    if isinstance(cfg.get("text_config"), dict) and isinstance(defaults.get("text_config"), dict):
        full["text_config"] = {**defaults["text_config"], **cfg["text_config"], **loaded.get("text_config", {})}
    return full


def vision_params(vision: dict, text_hidden: int) -> int:
    """Parameters of a ViT-style vision tower (SigLIP, CLIP) and its projection into the language model: per layer
    q/k/v/o and two MLP matrices with biases and two layer norms; patch and position embeddings; a final norm;
    SigLIP's attention-pooling head where the config has one; a (vision hidden x text hidden) projection with its
    norm (Gemma 3's)."""
    h = vision["hidden_size"]
    i = vision.get("intermediate_size") or 4 * h
    layers = vision.get("num_hidden_layers") or vision.get("depth") or 0
    patch, channels = vision.get("patch_size", 14), vision.get("num_channels", 3)
    positions = (vision.get("image_size", 224) // patch) ** 2
    per_layer = 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h
    tower = layers * per_layer + channels * patch * patch * h + h + positions * h + 2 * h + h * text_hidden + h
    if vision.get("vision_use_head", vision.get("model_type", "").startswith("siglip")):  # SigLIP's pooling head
        tower += h + (4 * h * h + 4 * h) + 2 * h + (2 * h * i + i + h)  # probe, attention, norm, MLP
    return tower
