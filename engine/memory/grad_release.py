"""Full fine-tuning without a gradient buffer: each weight is updated during the backward, the moment its gradient is
complete, and the gradient is freed at once. About one weight's gradient exists at a time (the largest tensor's,
usually the embedding) instead of a second 16-bit copy of the model: by their shapes, Llama-3-8B's embedding
gradient is 1.0 GiB and all its gradients 15 GiB. The
offload planner (engine.memory.offload.plan) chooses it for full fine-tuning when even the paged optimizer's states in
host RAM leave the run over its VRAM budget.

How: one optimizer per trainable tensor, of the run's own kind (engine.training.sft.make_optimizer: bitsandbytes' 8-bit
AdamW keeps its states per tensor anyway; torch's AdamW on the CPU), stepped from the tensor's
post-accumulate-grad hook. `StepInBackward` stands in for the run's optimizer in the training loop: the learning-rate
schedule sets its groups' lr, which each update reads; its `step()` and `zero_grad()` find nothing left to do; its
state dict carries every tensor's optimizer state, so checkpoints resume.

What differs from a step after the backward:
- Clipping. The whole model's gradient norm is known only after the last update, so `max_grad_norm` caps each
  tensor's gradient norm instead of the whole model's. The norm reported in the metrics is still the whole model's
  (the root of the sum of the tensors' squared norms, before clipping).
- One micro-batch per step: an update cannot wait for gradients accumulated over several backwards, and fp16 loss
  scaling (which checks every gradient for inf before any update) does not fit either. The planner offers this only
  with grad_accum 1 and bf16 or fp32, and only to engine.training.sft's loop (SFT, continued pretraining), not to TRL's.

Measured on the H100 (`python3 bench/full_ft.py --arch qwen3_4b --vram-gib 20`, bench/README.md): Qwen3-4B full
fine-tuning under a 20 GiB cap, which the planner refused before, peaked at 10.38 GiB (15.89 with the gradients
kept, under a 30 GiB cap) at 539 tokens/s against 838: bitsandbytes' paged step waits for the GPU after each tensor,
now inside the backward.
"""

import math

import torch


class StepInBackward(torch.optim.Optimizer):
    """The optimizer of a run whose weights are updated in the backward (see the module docstring)."""

    def __init__(self, params, make, lr: float, max_grad_norm: float | None):
        """`params`: tensors or optimizer groups (dicts with their own lr); `make(groups)` builds the optimizer of one
        tensor from a one-group list."""
        super().__init__(params, dict(lr=lr))
        self.max_grad_norm = max_grad_norm or math.inf
        self.inner: dict[torch.Tensor, torch.optim.Optimizer] = {}
        self._group: dict[torch.Tensor, dict] = {}
        self._squares: torch.Tensor | float = 0.0
        for group in self.param_groups:
            for p in group["params"]:
                self._group[p] = group
                self.inner[p] = make([dict(params=[p], lr=group["lr"])])
                p.register_post_accumulate_grad_hook(self._update)

    def _update(self, p: torch.Tensor) -> None:
        norm = torch.nn.utils.clip_grad_norm_([p], self.max_grad_norm)  # on the device: no wait for the GPU
        self._squares = self._squares + norm.float() ** 2
        inner = self.inner[p]
        inner.param_groups[0]["lr"] = self._group[p]["lr"]
        inner.step()
        p.grad = None

    def take_grad_norm(self) -> float:
        """The whole model's gradient norm over the backwards since the last call (before any clipping)."""
        squares, self._squares = self._squares, 0.0
        return math.sqrt(float(squares))

    @torch.no_grad()
    def step(self, closure=None):
        """Nothing left to do: every weight was updated in the backward."""
        return closure() if closure is not None else None

    def state_dict(self) -> dict:
        return dict(outer=super().state_dict(), inner=[self.inner[p].state_dict() for p in self._group])

    def load_state_dict(self, state_dict: dict) -> None:
        """Its own state dict, or one optimizer's over the same weights (the checkpoint of a plan that stepped after
        the backward, resumed under a lower budget), split into each weight's."""
        if "outer" not in state_dict:
            state_dict = per_weight(state_dict)
        super().load_state_dict(state_dict["outer"])
        # torch's load_state_dict makes new group dicts, which the schedule sets the lr of from now on: each weight's
        # update reads its group's (the old dicts kept the lr of the start, whatever the schedule said)
        self._group = {p: group for group in self.param_groups for p in group["params"]}
        for p, inner in zip(self._group, state_dict["inner"], strict=True):
            self.inner[p].load_state_dict(inner)


def per_weight(state: dict) -> dict:
    """One optimizer's state dict (torch's layout: each weight's state by its index over the groups) as
    StepInBackward's over the same weights: the groups' learning rates outside, each weight's state with its group's
    settings inside."""
    inner = []
    for group in state["param_groups"]:
        settings = {k: v for k, v in group.items() if k != "params"}
        for i in group["params"]:
            mine = {0: state["state"][i]} if i in state["state"] else {}
            inner.append(dict(state=mine, param_groups=[dict(settings, params=[0])]))
    return dict(outer=dict(state={}, param_groups=state["param_groups"]), inner=inner)


def one_optimizer(state: dict) -> dict:
    """StepInBackward's state dict as one optimizer's over the same weights (its checkpoint resumed under a plan that
    steps after the backward): each group takes its weights' settings, with the learning rates the schedule set."""
    inner, states, groups = iter(state["inner"]), {}, []
    for group in state["outer"]["param_groups"]:
        settings = {}
        for i in group["params"]:
            weight = next(inner)
            settings = settings or {k: v for k, v in weight["param_groups"][0].items() if k != "params"}
            if weight["state"]:
                states[i] = next(iter(weight["state"].values()))
        groups.append({**settings, **group})
    return dict(state=states, param_groups=groups)
