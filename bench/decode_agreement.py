"""How often greedy bf16 replies agree, token for token, between our decoder, transformers and an fp32 reference, on
a random-weight Qwen3-0.6B-shaped model (the GPU test's model), over 32 prompts x 64 tokens.

    python3 bench/decode_agreement.py

Prints one `RESULT {json}` line: for each pair, the prompts that agree on all 64 tokens and the mean common prefix.
Pairs: ours vs transformers (sdpa), transformers (eager attention) vs transformers (sdpa), and each of ours,
transformers sdpa and transformers eager against transformers in fp32. The second pair is the yardstick: two bf16
runs of transformers itself, which differ only in the attention kernel.
"""

import copy
import json
import os
import sys

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))

from tiny import QWEN3_06B  # noqa: E402  the GPU tests' model

NEW = 64


def main():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.chat.decode import Decoder

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3", **QWEN3_06B), dtype=torch.bfloat16)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 30000, (1, 128), generator=gen).cuda() for _ in range(32)]

    def greedy(m, ids):
        cfg = copy.deepcopy(m.generation_config)
        cfg.update(eos_token_id=None, pad_token_id=0, do_sample=False, max_new_tokens=NEW)
        with torch.inference_mode():
            out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
        return out[0, ids.shape[1] :].tolist()

    def prefix(p, q):
        return next((i for i, (x, y) in enumerate(zip(p, q, strict=True)) if x != y), NEW)

    def agreement(a, b):
        prefixes = [prefix(p, q) for p, q in zip(a, b, strict=True)]
        return dict(full=sum(p == NEW for p in prefixes), mean_prefix=round(sum(prefixes) / len(prefixes), 1))

    hf = [greedy(model, ids) for ids in prompts]
    decoder = Decoder(model, log=lambda m: None)
    with torch.inference_mode():
        ours = [decoder.generate(ids, NEW)[0, ids.shape[1] :].tolist() for ids in prompts]
    model.set_attn_implementation("eager")
    eager = [greedy(model, ids) for ids in prompts]
    model.set_attn_implementation("sdpa")
    exact = [greedy(copy.deepcopy(model).float(), ids) for ids in prompts]
    result = {
        "ours~hf": agreement(ours, hf),
        "hf_eager~hf": agreement(eager, hf),
        "ours~fp32": agreement(ours, exact),
        "hf~fp32": agreement(hf, exact),
        "hf_eager~fp32": agreement(eager, exact),
        "prompts": len(prompts),
        "new_tokens": NEW,
        "gpu": torch.cuda.get_device_name(0),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
