"""The notebook model's memory plan: made when from_pretrained loads the weights, before the notebook says what it
trains, and made again by get_peft_model once it trains embed_tokens and lm_head (continued pretraining), whose
copies, gradients and optimizer states the plan then counts, as an app run's plan counts them from the start
(issue 24: the plan is what the run holds).
"""

from engine.core.errors import UserError


def load(spec, path, placement):
    """(model, plan): the model at `path` loaded as its memory plan says (engine.models.loading.load_planned), with
    the plan on it as `memory_plan`, and the config and placement it was made with kept for `with_embeddings`."""
    from engine.models.loading import load_planned, read_config

    cfg = read_config(path)
    model, memory = load_planned(spec, path, cfg, placement)
    model.memory_plan = memory
    model.tunesmith_planned = (cfg, placement)
    return model, memory


def with_embeddings(model, spec, call: str):
    """The plan get_peft_model prepares `model` (from `load`) with for `spec`, its settings with the adapters: the
    model's own plan, or, where `spec` trains embed_tokens and lm_head, one made again with them (and the adapters'
    rank and targets), kept on the model. Which layers stream from host RAM was fixed when the weights loaded: a plan
    that streams others is refused with what to change."""
    from engine.models.loading import plan_memory

    memory = getattr(model, "memory_plan", None)
    if memory is None or not spec.train_embeddings:
        return memory
    cfg, placement = model.tunesmith_planned
    # the copies are trained whatever loss the notebook's trainer computes; the planner counts them for continued
    # pretraining (engine.memory.verdict.embedding_width), which is what an app run training them is
    plan = plan_memory(spec.replace(objective="pretrain"), cfg, placement)
    if plan.streamed != memory.streamed:
        raise UserError(
            f"{call}: with embed_tokens and lm_head trained, this model's memory plan streams {len(plan.streamed)} "
            f"layers' weights from host RAM, and from_pretrained loaded it streaming {len(memory.streamed)} (which "
            "layers stream is fixed when the weights load); use a shorter max_seq_length or a smaller r, or train "
            "the adapters alone (without embed_tokens and lm_head)."
        )
    gpu = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    if memory.host_embedding and not plan.host_embedding and gpu:
        # engine.memory.weights.load_streamed left the input embedding in host RAM for the first plan; a trained one
        # is planned on the GPU (engine.memory.offload.plan), where load_streamed puts it for such a plan
        for p in model.get_input_embeddings().parameters():
            p.data = p.data.to(gpu[0])
    print(f"{plan.describe()} (made again with embed_tokens and lm_head trained)")
    model.memory_plan = plan
    return plan
