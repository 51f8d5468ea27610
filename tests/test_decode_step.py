"""engine/chat/decode_step.py and the paths of engine.chat.decode.Decoder, on tiny random-weight models (fp32, CPU):
which path each family takes, the step on the Triton kernels (interpreter) against transformers, the packed q/k/v and
gate/up weights (still the model's own Parameters, for training and saving), a rebuild when weights move, a 4-bit NF4
base, and transformers generate for sliding-window caches."""

import copy
import threading

import pytest
import torch
from tiny import make_model

from engine.chat.decode import Decoder, Sampling
from engine.chat.decode_step import DecodeStep, signature

PROMPT = torch.tensor([[5, 17, 42, 99, 7, 250, 31, 64]])
N = 12  # new tokens per comparison


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    made = {}

    def get(arch):
        if arch not in made:
            made[arch] = make_model(arch, tmp_path_factory.mktemp(arch) / "model")
        return made[arch]

    return get


def load(folder, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).eval()


def with_lora(model, seed=1):
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    torch.manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.2)
    return peft_model.eval()


def hf_greedy(model, ids, n, **kw):
    cfg = copy.deepcopy(model.generation_config)
    cfg.update(eos_token_id=None, pad_token_id=0, do_sample=False, max_new_tokens=n, **kw)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
    return out[0, ids.shape[1] :].tolist()


def ours(decoder, n=N, **kw):
    return list(decoder.tokens(PROMPT, n, **kw))


@pytest.mark.parametrize(
    "arch, path",
    [
        ("llama", "step"),
        ("qwen2", "step"),
        ("qwen3", "step"),
        ("mistral", "step"),
        ("gemma", "forward"),
        ("gemma2", "generate"),
        ("gemma3", "generate"),
    ],
)
def test_each_family_takes_its_path_and_says_why(folders, arch, path):
    lines = []
    decoder = Decoder(load(folders(arch)), log=lines.append)
    assert decoder.path == path
    (line,) = lines
    expected = {"step": "our decode step for", "forward": "transformers' forward", "generate": "transformers generate"}
    assert expected[path] in line
    if path == "generate":
        assert "StaticSlidingWindowLayer" in line
    elif path == "forward":
        assert "model type 'gemma' has no decode step of ours" in line


def test_kernels_off_and_sliding_windows_leave_our_step(folders, monkeypatch):
    lines = []
    assert Decoder(load(folders("llama")), log=lines.append, kernels=False).path == "forward"
    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    assert Decoder(load(folders("qwen3")), log=lines.append).path == "forward"
    assert all("bit-equal to transformers generate" in line for line in lines)
    monkeypatch.delenv("TUNESMITH_DECODE_KERNELS")
    model = load(folders("mistral"))
    model.config.sliding_window = 4  # shorter than the prompt: the window matters
    decoder = Decoder(model, log=lines.append)
    assert decoder.path == "generate" and "mistral with sliding-window attention" in lines[-1]
    assert ours(decoder) == hf_greedy(model, PROMPT, N)


def test_step_on_the_triton_kernels_matches_transformers(folders):
    """The step as the GPU runs it (Triton kernels, here in the interpreter), with LoRA on and off: qwen3 has the
    per-head q/k norms, so every kernel runs."""
    model = with_lora(load(folders("qwen3")))
    decoder = Decoder(model, log=lambda m: None)
    decoder.step.backend = "triton"
    n = 6  # the interpreter takes ~0.3 s a step on this model
    assert ours(decoder, n) == hf_greedy(model, PROMPT, n)
    base = ours(decoder, n, adapter=False)
    with model.disable_adapter():
        assert base == hf_greedy(model, PROMPT, n)


def test_packed_weights_are_the_models_own_parameters(folders, tmp_path):
    """q/k/v and gate/up become row slices of one buffer each: same Parameter objects and values, and a training
    step, save_pretrained and the decoder all see the one copy."""
    model = load(folders("qwen2"))  # q/k/v with biases
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    params = dict(model.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    decoder = Decoder(model, log=lambda m: None)
    assert dict(model.named_parameters()) == params  # the same objects under the same names
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    qkv, gate_up = (p.base.weight for p in decoder.step.layers[0].qkv.projections), mlp.gate_proj.weight
    assert len({w.untyped_storage().data_ptr() for w in qkv}) == 1
    assert attn.q_proj.bias.untyped_storage().data_ptr() == attn.v_proj.bias.untyped_storage().data_ptr()
    assert gate_up.untyped_storage().data_ptr() == mlp.up_proj.weight.untyped_storage().data_ptr()
    assert ours(decoder) == hf_greedy(model, PROMPT, N)

    # a full fine-tuning step updates the packed buffer in place: the step sees it without a rebuild
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(input_ids=PROMPT, labels=PROMPT).loss.backward()
    opt.step()
    model.eval()
    assert not torch.equal(attn.k_proj.weight, before["model.layers.0.self_attn.k_proj.weight"])
    assert torch.equal(decoder.step.layers[0].qkv.packed[0][attn.q_proj.weight.shape[0] :][:8], attn.k_proj.weight[:8])
    rebuilt = []
    decoder.log = rebuilt.append
    assert ours(decoder) == hf_greedy(model, PROMPT, N) and not rebuilt

    model.save_pretrained(tmp_path / "saved")  # transformers clones the disjoint slices before writing safetensors
    again = load(tmp_path / "saved")
    assert all(torch.equal(p, params[name]) for name, p in again.named_parameters())


def test_moved_weights_rebuild_the_step(folders):
    model = load(folders("llama"))
    lines = []
    decoder = Decoder(model, log=lines.append)
    first = decoder.step
    k = model.model.layers[1].self_attn.k_proj.weight
    k.data = k.data.clone() * 1.5  # storage of its own again (as model.to() or a safe merge would do)
    assert signature(model) != first.signature
    assert ours(decoder) == hf_greedy(model, PROMPT, N)
    assert decoder.step is not first and "step rebuilt" in lines[-1]


def test_layers_with_instance_forwards_keep_their_weights_in_place(folders):
    """engine/patching/graphs.py gives each layer an instance forward whose captured graphs hold the weights'
    addresses: the step must not move them."""
    model = load(folders("llama"))
    pointers = [p.data_ptr() for p in model.parameters()]
    for layer in model.model.layers:
        layer.forward = layer.forward  # an instance attribute, as graphs.install sets
    step = DecodeStep(model)
    assert [p.data_ptr() for p in model.parameters()] == pointers
    assert "separate matvecs (layer 0 has an instance forward" in step.describe()
    assert ours(Decoder(model, log=lambda m: None)) == hf_greedy(model, PROMPT, N)


def test_hooks_the_step_would_skip_send_the_model_to_its_own_forward(folders):
    """A layer whose weights are streamed in by a forward pre-hook (engine/memory/offload.py's weight streaming does
    this) decodes through transformers' forward, whether the hook was there first or came later."""
    model = load(folders("llama"))
    lines = []
    decoder = Decoder(model, log=lines.append)
    assert decoder.path == "step"
    layer = model.model.layers[1]
    resident = {name: p.data for name, p in layer.named_parameters()}

    def bring_in(module, args):
        for name, p in module.named_parameters():
            p.data = resident[name]

    def send_away(module, args, out):
        for p in module.parameters():
            p.data = torch.empty(0)

    layer.register_forward_pre_hook(bring_in)
    layer.register_forward_hook(send_away)
    send_away(layer, None, None)
    assert ours(decoder) == hf_greedy(model, PROMPT, N)
    assert decoder.path == "forward" and "forward pre-hooks" in lines[-1]
    assert Decoder(model, log=lines.append).path == "forward" and "forward pre-hooks" in lines[-1]


def test_merged_and_unloaded_adapters(folders):
    """PEFT's in-place merge writes through the packed buffer; decoding without the adapter unmerges first, as
    PEFT's forward does; merge_and_unload leaves a plain model that still decodes as transformers."""
    model = with_lora(load(folders("qwen3")))
    decoder = Decoder(model, log=lambda m: None)
    tuned, base = ours(decoder), ours(decoder, adapter=False)
    model.merge_adapter()
    assert ours(decoder) == tuned
    assert ours(decoder, adapter=False) == base
    merged = model.merge_and_unload()
    assert ours(Decoder(merged, log=lambda m: None)) == tuned == hf_greedy(merged, PROMPT, N)


def load_nf4(folder):
    """The model at `folder` on the CPU with NF4 weights (double-quantized absmax, fp32 compute)."""
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    return load(folder, quantization_config=quant, device_map={"": "cpu"})


def test_nf4_base_with_lora_matches_transformers(folders):
    model = with_lora(load_nf4(folders("qwen3")))
    lines = []
    decoder = Decoder(model, log=lines.append)
    assert "nf4 projections" in lines[0]
    assert ours(decoder) == hf_greedy(model, PROMPT, N)
    base = ours(decoder, adapter=False)
    with model.disable_adapter():
        assert base == hf_greedy(model, PROMPT, N)


def test_generate_path_streams_stops_samples_and_closes(folders):
    model = with_lora(load(folders("gemma2")))
    decoder = Decoder(model, log=lambda m: None)
    assert decoder.path == "generate"
    full = ours(decoder)
    assert full == hf_greedy(model, PROMPT, N)
    assert ours(decoder, stop_ids=[full[5]]) == full[: full.index(full[5])]
    with model.disable_adapter():
        assert ours(decoder, adapter=False) == hf_greedy(model, PROMPT, N)
    hot = Sampling(temperature=1.5, top_k=40, top_p=0.95, min_p=0.01, repetition_penalty=1.1, seed=3)
    assert ours(decoder, sampling=hot) == ours(decoder, sampling=hot) != full
    threads = threading.active_count()
    stream = decoder.tokens(PROMPT, 400)
    next(stream)
    stream.close()  # stops generate at its next token and joins the worker
    assert threading.active_count() == threads and not decoder._busy
    with pytest.raises(RuntimeError, match="already generating"):
        stream = decoder.tokens(PROMPT, 4)
        next(stream)
        next(decoder.tokens(PROMPT, 4))
    stream.close()
