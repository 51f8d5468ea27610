"""The Ollama Modelfile written beside an exported GGUF file: the chat template in Ollama's Go template language (for
the ChatML and Llama 3 layouts it recognises by rendering a probe conversation), stop strings and sampling defaults.
"""

import json

from engine.data.templates import render_template

OLLAMA_CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
OLLAMA_LLAMA3 = (
    "<|begin_of_text|>{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
_PROBE_CHAT = [
    {"role": "system", "content": "S1"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]


def _chatml(msgs) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs) + "<|im_start|>assistant\n"


def _llama3(msgs) -> str:
    body = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in msgs)
    return "<|begin_of_text|>" + body + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def ollama_template(template: str) -> tuple[str | None, list[str], str]:
    """(Go template for Ollama, its stop strings, the default system prompt) when the Jinja template renders as
    ChatML or Llama 3; else (None, [], "") and Ollama falls back to the template embedded in the GGUF. The default
    system prompt is the one the Jinja template puts first in a conversation without one (Qwen2.5's), else ""."""
    specials = dict(bos_token="<|begin_of_text|>", eos_token="", pad_token="")
    layouts = (
        (_chatml, OLLAMA_CHATML, ["<|im_start|>", "<|im_end|>"]),
        (_llama3, OLLAMA_LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    )
    for msgs in (_PROBE_CHAT, _PROBE_CHAT[1:]):
        try:
            text = render_template(template, msgs, True, **specials)
        except Exception:  # a template that rejects this conversation (e.g. no system role) is tried without it
            continue
        for layout, go, stops in layouts:
            if text == layout(msgs):
                return go, stops, _default_system(template, layout, specials)
    return None, [], ""


def _default_system(template: str, layout, specials: dict) -> str:
    """The system prompt `template` adds to a conversation that has none, as `layout` lays it out; "" for none."""
    msgs = _PROBE_CHAT[1:]
    try:
        text = render_template(template, msgs, True, **specials)
    except Exception:
        return ""
    marker = "\x00SYSTEM\x00"
    before, _, after = layout([{"role": "system", "content": marker}, *msgs]).partition(marker)
    if text == layout(msgs) or not (text.startswith(before) and text.endswith(after)):
        return ""
    system = text[len(before) : len(text) - len(after)]
    return system if text == layout([{"role": "system", "content": system}, *msgs]) else ""


def per_role_template(template: str, specials: dict) -> str | None:
    """Ollama's Go template for a Jinja template that writes each message alone, as a prefix and a suffix of its role
    around its content, after a fixed head and before the generation prompt (the plain and alpaca templates of
    engine.data.templates); None for any other, and wherever the Go template would not render the probe
    conversations exactly as the Jinja template does."""
    x, y = "\x00X\x00", "\x00Y\x00"
    try:
        head, parts = None, {}
        for role in ("system", "user", "assistant"):
            one = render_template(template, [{"role": role, "content": x}], False, **specials)
            two = render_template(
                template, [{"role": role, "content": x}, {"role": role, "content": y}], False, **specials
            )
            before, after = one.split(x)  # head + prefix, suffix
            prefix, suffix = two.removeprefix(one).split(y) if two.startswith(one) else ("", "\x00")
            if (
                suffix != after
                or not before.endswith(prefix)
                or head not in (None, before[: len(before) - len(prefix)])
            ):
                return None
            head, parts[role] = before[: len(before) - len(prefix)], (prefix, suffix)
        user = render_template(template, [{"role": "user", "content": x}], False, **specials)
        gen = render_template(template, [{"role": "user", "content": x}], True, **specials).removeprefix(user)
        for msgs in (_PROBE_CHAT, _PROBE_CHAT[1:]):
            laid_out = head + "".join(parts[m["role"]][0] + m["content"] + parts[m["role"]][1] for m in msgs) + gen
            if laid_out != render_template(template, msgs, True, **specials):
                return None
    except Exception:  # a template that refuses one of these conversations (e.g. two user turns in a row)
        return None
    if any("{{" in t or "}}" in t for t in (head, gen, *(p + s for p, s in parts.values()))):
        return None  # literal braces would need escaping in Go's syntax
    body = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{prefix}{{{{ .Content }}}}{suffix}'
        for i, (role, (prefix, suffix)) in enumerate(parts.items())
    )
    return f"{head}{{{{ range .Messages }}}}{body}{{{{ end }}}}{{{{ end }}}}{gen}"


# engine.chat.infer's sampling names -> Ollama's PARAMETER names
OLLAMA_PARAMS = dict(
    temperature="temperature", top_p="top_p", top_k="top_k", min_p="min_p", repetition_penalty="repeat_penalty"
)


def modelfile(
    gguf_name: str,
    template: str,
    stops: list[str],
    sampling: dict,
    bos_added: str | None = None,
    system: str = "",
    specials: dict | None = None,
) -> str:
    """The Ollama Modelfile text for `gguf_name` (in the same folder), with `sampling`
    (engine.chat.infer.sampling_defaults' keys) as its PARAMETER defaults. `bos_added`: the BOS text the GGUF has
    llama.cpp put before every prompt (add_bos_token), which the template then leaves out. `system`: the system
    prompt the model was trained with (a run's), in place of the template's default one. `specials`: the tokenizer's
    bos_token and eos_token texts, as the template writes them."""
    go, go_stops, default_system = ollama_template(template)
    if go is None:  # Ollama runs no Jinja: it would pick the nearest of its own templates, or none
        go = per_role_template(template, specials or {})
    system = system or (default_system if go else "")
    if go and bos_added and go.startswith(bos_added):  # else Ollama's prompts would start with two BOS tokens
        go = go.removeprefix(bos_added)
    lines = [f"FROM ./{gguf_name}", ""]
    if go and '"""' not in go:
        lines += [f'TEMPLATE """{go}"""', ""]
    else:
        lines += ["# Ollama cannot run this chat template; give one in its TEMPLATE syntax to chat with the model.", ""]
    if system and '"""' in system:  # a Modelfile has no escape: the rest would be read as lines of their own
        lines += ['# The system prompt is left out: it holds """, which a Modelfile cannot quote; send it in chat.', ""]
    elif system:  # Ollama puts it first where the user gives no system message, as training (or the template) did
        lines += [f'SYSTEM """{system}"""', ""]
    for s in dict.fromkeys(go_stops + stops):
        lines.append(f"PARAMETER stop {json.dumps(s)}")
    for k, v in sampling.items():
        lines.append(f"PARAMETER {OLLAMA_PARAMS[k]} {v}")
    return "\n".join(lines) + "\n"
