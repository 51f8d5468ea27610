"""Mixture-of-experts models (Qwen3-MoE, gpt-oss, Mixtral): where their experts and routers are, and what trains.

transformers 5 stores a layer's experts as fused 3-D parameters of one module (`experts.gate_up_proj` [E, 2I, H] or,
transposed, [E, H, 2I] for gpt-oss; `experts.down_proj`), not as per-expert Linear layers, so LoRA's target_modules
never reach them. They get adapters through PEFT's `target_parameters` instead (one rank-r adapter per expert, saved and
merged by PEFT like any other): a target module name `gate_proj` or `up_proj` selects the fused `gate_up_proj` (gate
and up are one tensor, adapted together), `down_proj` selects `down_proj`. That is what Unsloth's MoE notebooks do with
the default target list (attention and the experts' projections).

The router stays frozen unless the job asks (`train_router`): with LoRA it is then trained in full (PEFT's
modules_to_save, a few thousand weights a layer), with full fine-tuning it keeps requires_grad. The load-balancing
auxiliary loss is whatever the model's config says (`output_router_logits`, `router_aux_loss_coef`): transformers adds
it to `.loss`, which every training loop here uses.
"""

# The fused MLP tensor each target module name selects in an experts module.
FUSED_NAMES = {"gate_proj": ("gate_up_proj", "gate_proj"), "up_proj": ("gate_up_proj", "up_proj")}


def expert_modules(model) -> list[tuple[str, object]]:
    """(name, module) of every experts module: one holding 3-D expert weight parameters of its own."""
    found = []
    for name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if any(p.dim() == 3 for n, p in own.items() if n.endswith("_proj")):
            found.append((name, module))
    return found


def is_moe(model) -> bool:
    return bool(expert_modules(model))


def router_names(model) -> list[str]:
    """Module names of the routers: the sibling of each experts module that maps hidden states to expert logits."""
    names = []
    for name, experts in expert_modules(model):
        parent_name = name.rsplit(".", 1)[0]
        parent = model.get_submodule(parent_name)
        n_experts = next(p.shape[0] for p in experts.parameters() if p.dim() == 3)
        for child_name, child in parent.named_children():
            weight = getattr(child, "weight", None)
            if child is not experts and weight is not None and weight.dim() == 2 and weight.shape[0] == n_experts:
                names.append(f"{parent_name}.{child_name}")
    return names


def expert_parameters(model, target_modules) -> list[str]:
    """PEFT target_parameters for the experts' projections that `target_modules` names ('experts.gate_up_proj', ...)."""
    wanted = set()
    for t in target_modules:
        wanted.update(FUSED_NAMES.get(t, (t,)))
    names = set()
    for name, module in expert_modules(model):
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() == 3 and pname in wanted:
                names.add(f"{name.rsplit('.', 1)[-1]}.{pname}")
    return sorted(names)


def lora_options(model, spec, log=print) -> dict:
    """LoraConfig keyword arguments for a mixture-of-experts model (none for a dense one): adapters on the experts'
    projections unless spec.lora_experts is off, and the routers trained in full when spec.train_router is on."""
    if not is_moe(model):
        return {}
    kw = {}
    params = expert_parameters(model, spec.target_modules) if spec.lora_experts else []
    if params:
        kw["target_parameters"] = params
        log(f"lora: mixture-of-experts: one adapter per expert on {params}")
    else:
        log("lora: mixture-of-experts: experts frozen, adapters on the other target modules only")
    if getattr(model, "is_loaded_in_4bit", False):
        log("qlora: bitsandbytes leaves the fused expert weights 16-bit; the GPU fast path stores them NF4")
    routers = router_names(model)
    if spec.train_router and routers:
        kw["modules_to_save"] = sorted({n.rsplit(".", 1)[-1] for n in routers})
        log(f"lora: routers trained in full ({kw['modules_to_save']})")
    log(aux_loss_note(model.config))
    return kw


def freeze_routers(model, spec, log=print) -> None:
    """Full fine-tuning: keep the routers' weights as they are unless spec.train_router."""
    if not is_moe(model):
        return
    routers = router_names(model)
    if not spec.train_router:
        for name in routers:
            for p in model.get_submodule(name).parameters():
                p.requires_grad_(False)
    log(f"full: mixture-of-experts: {len(routers)} routers {'trained' if spec.train_router else 'frozen'}")
    log(aux_loss_note(model.config))


def aux_loss_note(config) -> str:
    if getattr(config, "output_router_logits", False):
        coef = getattr(config, "router_aux_loss_coef", None)
        return f"router load-balancing loss: on, coefficient {coef} (the model's config)"
    return "router load-balancing loss: off (the model's config has output_router_logits false)"
