"""fp16 training (a T4's, which has no bf16): every trainable weight is fp32, the frozen ones stay fp16.

torch's loss scaler will not unscale fp16 gradients ("Attempting to unscale FP16 gradients"), and AdamW on fp16
weights loses small updates to rounding and turns a zero gradient into NaN (its eps, 1e-8, is 0 in fp16): an
embedding row no token of the step used became NaN after one step. PEFT makes LoRA factors fp32 already, but the full
copies it trains beside them (modules_to_save: embed_tokens and lm_head with train_embeddings) are made in the base's
dtype. The activations stay 16-bit: a trained copy takes and gives what its frozen original did, so the layers around
it (and the fast path's kernels) see the same dtypes as in a LoRA-only run.
"""


def master_weights(model, log=print) -> int:
    """Make every trainable fp16 parameter of `model` fp32 in place (the same Parameter, so a tied head stays the
    embedding's and an optimizer made afterwards holds and updates fp32 weights), and each PEFT trained copy
    (modules_to_save) whose weights that made fp32 compute in fp32 from 16-bit inputs and give its frozen original's
    dtype back. Returns the number of values lifted."""
    import torch
    from peft.utils.other import ModulesToSaveWrapper

    lifted = [p for p in model.parameters() if p.requires_grad and p.dtype == torch.float16]
    for p in lifted:
        p.data = p.data.float()
    names = []
    for name, wrapper in model.named_modules():
        if not isinstance(wrapper, ModulesToSaveWrapper):
            continue
        original = next(wrapper.original_module.parameters(), None)
        for copy in wrapper.modules_to_save.values():
            own = next(copy.parameters(), None)
            if original is None or own is None or own.dtype == original.dtype or hasattr(copy, "master_weights"):
                continue
            copy.master_weights = (copy.register_forward_pre_hook(_cast_inputs(own.dtype), with_kwargs=True),)
            copy.master_weights += (copy.register_forward_hook(_cast_output(original.dtype)),)
            names.append(name.rsplit(".", 1)[-1])
    if lifted:
        n = sum(p.numel() for p in lifted)
        where = f" ({', '.join(sorted(set(names)))})" if names else ""
        log(f"precision: {n:,} trainable fp16 values{where} kept in fp32 (master weights); frozen weights stay fp16")
    return sum(p.numel() for p in lifted)


def _cast_inputs(dtype):
    """A forward pre-hook giving a module its floating inputs in `dtype` (its weights'): outside autocast torch
    multiplies no fp16 activations by fp32 weights."""

    def hook(module, args, kwargs):
        return tuple(_to(a, dtype) for a in args), {k: _to(v, dtype) for k, v in kwargs.items()}

    return hook


def _cast_output(dtype):
    """A forward hook giving a module's floating output in `dtype` (its frozen original's)."""

    def hook(module, args, output):
        return _to(output, dtype)

    return hook


def _to(value, dtype):
    import torch

    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
