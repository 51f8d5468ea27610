"""Named chat templates, for base models without one of their own (or to override a model's).

Each is a Jinja template in the Hugging Face form (messages, add_generation_prompt, bos_token, eos_token). Every
assistant turn ends in an end-of-turn marker; where the family's marker is EOS, the template says eos_token so the
model learns to stop with a token it already has. The template used is saved with the run's tokenizer, so chat and
export render exactly what training did.
"""

from engine.core.errors import UserError

_SYSTEM_FIRST = (  # families without a system turn put the system prompt in front of the first user message
    "{% set ns = namespace(sys='') %}"
    "{% if messages[0]['role'] == 'system' %}{% set ns.sys = messages[0]['content'] %}{% endif %}"
)

TEMPLATES = {
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "llama-3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    "mistral": (
        _SYSTEM_FIRST + "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
        "{% if ns.sys %}{{ ns.sys }}\n\n{% set ns.sys = '' %}{% endif %}{{ m['content'] }}[/INST]"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    ),
    "gemma": (  # content may be Gemma 3's list of parts ([{"type": "text", "text": ...}]): its text parts are written
        "{% macro text(c) %}{% if c is string %}{{ c }}{% else %}{% for p in c %}{% if p['type'] == 'text' %}"
        "{{ p['text'] }}{% endif %}{% endfor %}{% endif %}{% endmacro %}"
        + _SYSTEM_FIRST
        + "{{ bos_token }}{% for m in messages %}{% if m['role'] != 'system' %}<start_of_turn>"
        "{{ 'model' if m['role'] == 'assistant' else 'user' }}\n{% if ns.sys and m['role'] == 'user' %}"
        "{{ text(ns.sys) }}\n\n{% set ns.sys = '' %}{% endif %}{{ text(m['content']) }}<end_of_turn>\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    "alpaca": (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
        "{% elif m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
        "{% else %}### Response:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}### Response:\n{% endif %}"
    ),
    # Uses only tokens every model has (EOS ends each reply): the default for base models with no template.
    "plain": (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}### Assistant:\n{{ m['content'] }}{{ eos_token }}\n\n"
        "{% else %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
    ),
}
TEMPLATES["qwen"] = TEMPLATES["chatml"]  # Qwen's own form, without the default system prompt of Qwen2.5
NAMES = ("auto", *TEMPLATES)
# End-of-turn markers a template may end replies with; generation stops on them (as tokens or as text).
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


def apply(tokenizer, name: str = "auto") -> str:
    """Set the tokenizer's chat template: its own for "auto" (the plain one when it has none), else `name`.

    Returns a description of the template used, for the run log.
    """
    if name not in NAMES:
        raise UserError(f"Unknown chat template '{name}'; choose one of: {', '.join(NAMES)}.")
    if name == "auto" and getattr(tokenizer, "chat_template", None):
        return "the tokenizer's own"
    if not tokenizer.eos_token:
        raise UserError(
            "This tokenizer has no end-of-sequence token, so a reply could never end; pick an instruct "
            "model or one with an EOS token."
        )
    chosen = "plain" if name == "auto" else name
    tokenizer.chat_template = TEMPLATES[chosen]
    if name == "auto":
        return "plain ### User / ### Assistant (the model has none of its own)"
    return chosen


def stop_strings(template: str) -> list[str]:
    """End-of-turn markers that `template` writes, for stopping generation on their text."""
    return [m for m in END_OF_TURN if m in (template or "")]


def render_template(template: str, messages: list[dict], add_generation_prompt: bool, **specials) -> str:
    """Render a Jinja chat template in a sandbox, the way transformers does (trim_blocks, lstrip_blocks)."""
    import json

    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **specials)
