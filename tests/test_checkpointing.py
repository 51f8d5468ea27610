"""engine.memory.checkpointing: recompute only the layers whose activations do not fit the budget."""

import torch
from tiny import ARCHS

from engine.memory.checkpointing import fits_checkpointed, install, layers_to_checkpoint
from engine.memory.estimate import Arch

LLAMA8B = Arch(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128, vocab=128256, tied=False)


def test_a_big_card_recomputes_nothing_a_small_one_everything():
    assert layers_to_checkpoint(LLAMA8B, "qlora", 4096, 80.0, fused_loss=True) == 0
    assert layers_to_checkpoint(LLAMA8B, "qlora", 4096, 8.0, fused_loss=True) == 32
    assert layers_to_checkpoint(LLAMA8B, "qlora", 4096, None, fused_loss=True) == 32  # no GPU: no budget


def test_in_between_only_the_layers_that_do_not_fit():
    counts = [layers_to_checkpoint(LLAMA8B, "qlora", t, 24.0, fused_loss=True) for t in (2048, 4096, 8192, 16384)]
    assert counts == sorted(counts) and 0 < counts[1] < 32, counts  # more tokens, more layers recomputed
    # the fused loss holds one chunk of logits, not all of them: more room for activations
    assert layers_to_checkpoint(LLAMA8B, "qlora", 8192, 24.0, fused_loss=False) > counts[2]


def test_the_policy_follows_the_micro_batch_shape(tmp_path):
    """On the CPU (no budget) every layer recomputes; the choice is made per token count and logged once."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(ARCHS["llama"], vocab_size=64)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    lines = []
    install(model, "lora", None, fused_loss=False, log=lines.append)
    model.train()
    for width in (8, 8, 7):  # a new size with the same decision is not logged again (one line a run, not a step)
        ids = torch.ones(2, width, dtype=torch.long)
        model(input_ids=ids, labels=ids).loss.backward()
    assert lines == ["checkpointing: 2 of 2 layers recompute at 16 tokens per micro-batch (no GPU budget)"]
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    with torch.no_grad():
        model(input_ids=torch.ones(1, 4, dtype=torch.long))  # generation or evaluation: no decision, no log
    assert len(lines) == 1


def test_kept_attention_outputs_are_dropped_for_micro_batches_without_room_for_them():
    """A plan that keeps attention outputs for the recompute (engine.memory.activations.Checkpoint) keeps them at a
    token count whose estimate holds them, and drops them (the other offload choices unchanged) for a larger
    micro-batch."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.memory.activations import Checkpoint
    from engine.memory.checkpointing import SLACK
    from engine.memory.estimate import estimate

    capped = dict(offload_activations=True, host_embedding=True, graphs=True, loss_chunk=1024)  # llama8b under 8 GiB
    assert fits_checkpointed(LLAMA8B, "qlora", 2048, 8.0, True, keep_attention=True, **capped)
    assert not fits_checkpointed(LLAMA8B, "qlora", 4096, 8.0, True, keep_attention=True, **capped)
    assert fits_checkpointed(LLAMA8B, "qlora", 4096, 8.0, True, keep_attention=False, **capped)
    spec = dict(ARCHS["llama"], vocab_size=64, hidden_size=256, intermediate_size=512, head_dim=64)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    arch = Arch.from_config(model.config.to_dict())
    kw = dict(offload_activations=True, keep_attention=True)

    def peak(tokens, keep):
        return estimate(arch, "lora", tokens, 1, fused_loss=False, **{**kw, "keep_attention": keep}).peak_vram_gib

    budget = (peak(4096, False) + peak(4096, True)) / 2 * SLACK  # 4096 tokens fit only without them
    assert peak(4096, False) * SLACK < budget < peak(4096, True) * SLACK and peak(512, True) * SLACK <= budget
    lines = []
    install(model, "lora", budget, fused_loss=False, log=lines.append, **kw)
    layers = model.model.layers
    for index, layer in enumerate(layers):
        layer._gradient_checkpointing_func = Checkpoint(index, None, None, lambda: len(layers) - 1, keep_attention=True)
    model.train()
    kept = {}
    for batch, seq in ((1, 512), (2, 2048), (1, 512)):
        ids = torch.ones(batch, seq, dtype=torch.long)
        model(input_ids=ids, labels=ids).loss.backward()
        kept[batch * seq] = [layer._gradient_checkpointing_func.keep_attention for layer in layers]
    assert kept == {512: [True, True], 4096: [False, False]}
    assert ["attention outputs kept" in line for line in lines] == [True, False]


def test_layer_graphs_only_at_the_sizes_where_nothing_recomputes_and_they_fit():
    """Under a plan that recomputes layers at its largest micro-batch, engine.patching.graphs.install(per_shape=True)
    captures every layer's passes only at the token counts this adds to `model.layer_graph_tokens`: those where no
    layer recomputes and the estimate holds the graphs too (512 tokens here); 2,048 tokens fit without recomputing
    but not with the graphs, and 4,096 recompute."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.memory.checkpointing import SLACK
    from engine.memory.estimate import estimate

    spec = dict(ARCHS["llama"], vocab_size=64, hidden_size=256, intermediate_size=512, head_dim=64)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    arch = Arch.from_config(model.config.to_dict())
    kw = dict(graph_shapes=2)

    def peak(tokens, graphed):
        e = estimate(arch, "lora", tokens, 1, checkpointing=False, fused_loss=False, layer_graphs=graphed, **kw)
        return e.peak_vram_gib

    budget = (peak(2048, False) + peak(2048, True)) / 2 * SLACK
    assert peak(512, True) * SLACK <= budget < peak(4096, False) * SLACK
    model.layer_graph_tokens = set()  # as graphs.install(per_shape=True) leaves it
    lines = []
    install(model, "lora", budget, fused_loss=False, log=lines.append, **kw)
    model.train()
    recomputing = {}
    for seq in (512, 2048, 4096, 512):
        ids = torch.ones(1, seq, dtype=torch.long)
        model(input_ids=ids, labels=ids).loss.backward()
        recomputing[seq] = sum(layer.gradient_checkpointing for layer in model.model.layers)
    assert recomputing[512] == recomputing[2048] == 0 < recomputing[4096]
    assert model.layer_graph_tokens == {512}
    said = "cuda graphs: every layer's passes captured at 512 tokens per micro-batch (none recomputes)"
    assert lines.count(said) == 1, lines


def test_no_layer_graphs_where_they_would_leave_the_largest_micro_batch_no_room():
    """The graphs captured at a small size keep their pool for the run: a size is not admitted when the plan's largest
    micro-batch (`graph_tokens`) would no longer fit beside them, every layer recomputed; and once a size is admitted,
    the other sizes are decided again with what the graphs keep taken off the budget."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.memory.checkpointing import SLACK, layer_graphs_fit, layer_graphs_held
    from engine.memory.estimate import estimate

    spec = dict(ARCHS["llama"], vocab_size=64, hidden_size=256, intermediate_size=512, head_dim=64)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    arch = Arch.from_config(model.config.to_dict())
    kw = dict(graph_shapes=1)
    held = layer_graphs_held(arch, 512, **kw)
    recomputed = estimate(arch, "lora", 8192, 1, checkpointing=True, fused_loss=False, **kw).peak_vram_gib
    graphed = estimate(arch, "lora", 512, 1, checkpointing=False, fused_loss=False, layer_graphs=True, **kw)
    tight = (recomputed + held / 2) * SLACK  # 8,192 tokens fit recomputed, but not beside the 512-token graphs
    assert graphed.peak_vram_gib * SLACK <= tight
    assert layer_graphs_fit(arch, "lora", 512, tight, False, **kw)  # no largest micro-batch given
    assert not layer_graphs_fit(arch, "lora", 512, tight, False, graph_tokens=8192, **kw)
    roomy = (recomputed + 2 * held) * SLACK
    assert layer_graphs_fit(arch, "lora", 512, roomy, False, graph_tokens=8192, **kw)
    # 2,048 tokens fit without recomputing under the whole budget, not beside the graphs
    alone = estimate(arch, "lora", 2048, 1, checkpointing=False, fused_loss=False, **kw).peak_vram_gib
    budget = (alone + held / 2) * SLACK
    model.layer_graph_tokens = set()
    lines = []
    install(model, "lora", budget, fused_loss=False, log=lines.append, graph_tokens=2048, **kw)
    model.train()
    recomputing = []
    for seq in (2048, 512, 2048):
        ids = torch.ones(1, seq, dtype=torch.long)
        model(input_ids=ids, labels=ids).loss.backward()
        recomputing.append(sum(layer.gradient_checkpointing for layer in model.model.layers))
    assert model.layer_graph_tokens == {512}
    assert recomputing[0] == recomputing[1] == 0 < recomputing[2], (recomputing, lines)
