"""model.save_pretrained_merged / save_pretrained_gguf, through the engine's exports (engine.export.merge), and
push_to_hub_merged / push_to_hub_gguf, which upload such an export with engine.models.hub.push.

The trained part of the model (the LoRA adapter, or every weight after full fine-tuning) is saved with the tokenizer
to a hidden folder beside the destination, and engine.export.merge builds the result from it exactly as it does for a
run: a 4-bit base is merged into its 16-bit weights (not its 4-bit rounding), every export is checked against PyTorch,
and the destination appears only when complete (never overwritten). The hidden folder is removed afterwards.
"""

import os
import shutil
import tempfile
from itertools import chain, count
from pathlib import Path

from engine.core.errors import UserError
from tunesmith import options
from tunesmith.model_spec import is_peft, spec_of

SAVE_METHODS = {"merged_16bit": "merged16", "lora": "lora"}
# Unsloth's quantization_method names, the engine's GGUF formats, and Unsloth's three aliases
GGUF_METHODS = {
    "f16": "gguf-f16",
    "bf16": "gguf-bf16",
    "q8_0": "gguf-q8_0",
    "q4_k_m": "gguf-q4_k_m",
    "q5_k_m": "gguf-q5_k_m",
    "q6_k": "gguf-q6_k",
    "mxfp4": "gguf-mxfp4",
    "not_quantized": "gguf-f16",
    "fast_quantized": "gguf-q8_0",
    "quantized": "gguf-q4_k_m",
}
SAVE_OPTIONS = {
    "push_to_hub": ((False,), "upload with model.push_to_hub_merged / push_to_hub_gguf('user/repo', tokenizer, ...)"),
    "token": ((None,), "a token is for uploads: pass it to push_to_hub_merged / push_to_hub_gguf, or set HF_TOKEN"),
    "safe_serialization": ((True,), "weights are always written as safetensors"),
}
PUSH_OPTIONS = {k: v for k, v in SAVE_OPTIONS.items() if k != "token"}


def save_pretrained_merged(model, save_directory, tokenizer=None, save_method: str = "merged_16bit", **kwargs):
    """Save the model as a merged 16-bit safetensors folder, or as its LoRA adapter.

    Args:
        model: a model from FastLanguageModel (bound already when called as model.save_pretrained_merged).
        save_directory: a new folder (an existing one is refused, never overwritten).
        tokenizer: saved with the model; its chat template is the one training used. None uses the base model's.
        save_method: "merged_16bit" (LoRA merged into the base's 16-bit weights, loadable by plain transformers)
            or "lora" (the PEFT adapter alone). 4-bit merged weights are refused: use GGUF q4_k_m for a small file.
        **kwargs: push_to_hub=False, token=None and safe_serialization=True are accepted; other values refused.

    Returns:
        engine.export.merge.ExportResult: the folder, its files and the checks that passed.
    """
    options.check("save_pretrained_merged", kwargs, SAVE_OPTIONS, save_pretrained_merged)
    return _export(model, tokenizer, [_merged_format("save_pretrained_merged", save_method)], save_directory)[0]


def _merged_format(call: str, save_method: str) -> str:
    if save_method not in SAVE_METHODS:
        raise UserError(
            f"{call}: save_method={save_method!r} is not supported; use one of {', '.join(SAVE_METHODS)} "
            '(or save_pretrained_gguf with quantization_method="q4_k_m" for a 4-bit file).'
        )
    return SAVE_METHODS[save_method]


def save_pretrained_gguf(model, save_directory, tokenizer=None, quantization_method: str = "fast_quantized",
                         quantization_type: str | None = None, **kwargs):  # fmt: skip
    """Save the model as one GGUF file for llama.cpp / Ollama, with a Modelfile beside it, in a new folder.

    Args:
        model: a model from FastLanguageModel (bound already when called as model.save_pretrained_gguf).
        save_directory: a new folder (an existing one is refused, never overwritten).
        tokenizer: its chat template and stop tokens go into the file. None uses the base model's.
        quantization_method: one of f16, bf16, q8_0, q4_k_m, q5_k_m, q6_k, or Unsloth's aliases not_quantized
            (f16), fast_quantized (q8_0, the default) and quantized (q4_k_m), or mxfp4 (mixture-of-experts models:
            experts in MXFP4, the rest Q8_0). Or a list of them, as Unsloth takes it: every GGUF file goes into the
            one folder (each exported and checked on its own), with the first method's Modelfile.
        quantization_type: the same, as Unsloth's FastModel notebooks (Gemma 3) spell it ("Q8_0", "BF16", "F16");
            it is used when quantization_method is left at its default.
        **kwargs: push_to_hub=False and token=None are accepted; other values refused.

    Returns:
        engine.export.merge.ExportResult: the folder, its files and the llama.cpp-vs-PyTorch checks; for a list of
        methods, a list of them (one a method, each naming the files it added to the folder).
    """
    options.check("save_pretrained_gguf", kwargs, SAVE_OPTIONS, save_pretrained_gguf)
    fmts = _gguf_formats("save_pretrained_gguf", quantization_method, quantization_type)
    results = _export(model, tokenizer, fmts, save_directory)
    return results if isinstance(quantization_method, (list, tuple)) else results[0]


def push_to_hub_merged(model, repo_id: str, tokenizer=None, save_method: str = "merged_16bit", token=None,
                       private: bool = False, **kwargs):  # fmt: skip
    """save_pretrained_merged into a new folder named after the repository (in the current folder; "name-2", ...
    where that exists), then upload it.

    Args:
        model: a model from FastLanguageModel (bound already when called as model.push_to_hub_merged).
        repo_id: "user/name" on the Hugging Face hub (created if missing).
        tokenizer, save_method: as for save_pretrained_merged.
        token: a write token; None or "" reads HF_TOKEN, else the token `hf auth login` / notebook_login() stored
            (as huggingface_hub does). It goes only to huggingface_hub's requests, never to a log.
        private: create the repository private (an existing one keeps its visibility).

    Returns:
        The repository's URL. Without a token nothing is exported; a failed upload keeps the folder (push it again).
    """
    options.check("push_to_hub_merged", kwargs, PUSH_OPTIONS, push_to_hub_merged)
    return _push(model, tokenizer, [_merged_format("push_to_hub_merged", save_method)], repo_id, token, private)


def push_to_hub_gguf(model, repo_id: str, tokenizer=None, quantization_method: str = "fast_quantized", token=None,
                     private: bool = False, quantization_type: str | None = None, **kwargs):  # fmt: skip
    """save_pretrained_gguf into a new folder named after the repository (in the current folder), then upload it;
    arguments as for push_to_hub_merged, quantization_method (one, or a list uploaded together) and quantization_type
    as for save_pretrained_gguf."""
    options.check("push_to_hub_gguf", kwargs, PUSH_OPTIONS, push_to_hub_gguf)
    fmts = _gguf_formats("push_to_hub_gguf", quantization_method, quantization_type)
    return _push(model, tokenizer, fmts, repo_id, token, private)


def _push(model, tokenizer, fmts: list[str], repo_id: str, token, private: bool) -> str:
    from huggingface_hub import get_token

    from engine.models import hub

    # Unsloth notebooks pass token="" (or none) after notebook_login() / `hf auth login`, which store the token in
    # the Hugging Face home rather than HF_TOKEN; get_token reads HF_TOKEN, then that file (and Colab's secret)
    token = token or get_token()
    if not token:
        raise UserError(
            'Uploading to the Hugging Face hub needs a write token: set HF_TOKEN, pass token="hf_...", or log in '
            "with `hf auth login` (notebook_login() in a notebook); create one at huggingface.co/settings/tokens."
        )
    token = hub.check_target(repo_id, token)  # a bad name: refused before anything is exported
    name = repo_id.split("/")[-1]
    # Unsloth notebooks save into "model" and push to "user/model" in the next line: that folder is theirs, so the
    # upload's export takes the next free name rather than being refused
    folder = next(p for p in chain([Path(name)], (Path(f"{name}-{i}") for i in count(2))) if not p.exists())
    if folder.name != name:
        print(f"push: '{name}' exists here; exporting into '{folder}' for the upload")
    results = _export(model, tokenizer, fmts, folder)
    return hub.push(results[0].path, repo_id, token=token, private=private)


def _gguf_format(call: str, quantization_method, quantization_type=None) -> str:
    if quantization_type is not None:
        if (
            quantization_method != "fast_quantized"
            and str(quantization_method).lower() != str(quantization_type).lower()
        ):
            raise UserError(
                f"{call}: quantization_method={quantization_method!r} and quantization_type={quantization_type!r} "
                "are the same setting; give one of them."
            )
        quantization_method = quantization_type
    fmt = GGUF_METHODS.get(str(quantization_method).lower())
    if fmt is None:
        raise UserError(
            f"{call}: quantization_method={quantization_method!r} is not supported; use one of "
            f"{', '.join(GGUF_METHODS)}."
        )
    return fmt


def _gguf_formats(call: str, quantization_method, quantization_type=None) -> list[str]:
    """The engine's GGUF formats for one quantization_method or a list of them (repeats, aliases included, once)."""
    if not isinstance(quantization_method, (list, tuple)):
        return [_gguf_format(call, quantization_method, quantization_type)]
    if quantization_type is not None:
        raise UserError(
            f"{call}: quantization_method={list(quantization_method)!r} and quantization_type="
            f"{quantization_type!r} are the same setting; give one of them."
        )
    if not quantization_method:
        raise UserError(f'{call}: quantization_method=[] names no method; give one, e.g. "q4_k_m".')
    return list(dict.fromkeys(_gguf_format(call, m) for m in quantization_method))


def _export(model, tokenizer, fmts: list[str], save_directory) -> list:
    from engine.core.disk import owner_tag
    from engine.export.merge import export
    from engine.training.steps import save_trainable
    from tunesmith.generate import FastGenerate

    out = Path(save_directory).expanduser().absolute()
    if out.exists():  # checked here too so that nothing is saved for an export that would be refused
        raise UserError(f"'{out}' already exists; choose another folder name (nothing is ever overwritten).")
    spec = spec_of(model)
    if not is_peft(model) and spec.method != "full":
        raise UserError(
            "Nothing trained to save: add LoRA adapters with FastLanguageModel.get_peft_model (or load with "
            "full_finetuning=True) and train first."
        )
    if "lora" in fmts and spec.method == "full":
        raise UserError(
            'This model was fully fine-tuned, so it has no LoRA adapter to save; use save_method="merged_16bit".'
        )
    if tokenizer is None and spec.method == "full":
        raise UserError("Pass the tokenizer: a fully fine-tuned model is saved with it, e.g. (dir, tokenizer).")
    fast = model.__dict__.get("generate")
    if isinstance(fast, FastGenerate):
        fast.release()  # on a GPU the decoder swaps norm modules, which would rename weights in a full save
    out.parent.mkdir(parents=True, exist_ok=True)
    # named as the engine's half-built folders (owner process, .partial): when this process is killed midway (out of
    # memory while merging), the next export here removes it (engine.core.disk.remove_stale_partials)
    hidden = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{owner_tag()}.", suffix=".partial"))
    try:
        source = hidden / out.name  # the GGUF file is named after this folder
        save_trainable(model, source)
        if tokenizer is not None:
            tokenizer.save_pretrained(source)
        if len(fmts) == 1:
            return [export(str(source), fmts[0], out)]
        return _gathered(source, fmts, out, hidden)
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


def _gathered(source: Path, fmts: list[str], out: Path, hidden: Path) -> list:
    """Each GGUF format exported on its own into `hidden` (its file named after `out`, checked against PyTorch), then
    the files moved into the new folder `out`: every GGUF file, and the Modelfile of the first (it names its file)."""
    import dataclasses

    from engine.core.files import new_folder
    from engine.export.merge import export

    parts = [export(str(source), fmt, hidden / fmt / out.name) for fmt in fmts]
    results = []
    with new_folder(out) as tmp:
        for i, part in enumerate(parts):
            moved = [name for name in part.files if i == 0 or name.endswith(".gguf")]
            for name in moved:
                os.replace(part.path / name, tmp / name)
            results.append(dataclasses.replace(part, path=out, files=moved))
    return results
