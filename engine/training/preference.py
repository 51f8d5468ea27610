"""DPO and ORPO on preference pairs (prompt, chosen, rejected), through TRL's trainers with the engine's model.

DPO (trl.DPOTrainer) raises the likelihood of the chosen reply over the rejected one, relative to a reference model.
With LoRA the reference is the same loaded model with the adapter switched off (PEFT's disable_adapter), so no second
copy is held: TRL would otherwise add a frozen copy of the adapter named "ref", which for our freshly initialized
adapter is the base model anyway, and for a resumed run would wrongly be the half-trained one, so it is removed.
Full fine-tuning has no adapter to switch off, so there the reference is a second, frozen copy of the weights.
ORPO (trl.experimental.orpo.ORPOTrainer in TRL 1.15) needs no reference at all: an SFT loss on the chosen reply plus
an odds-ratio term (weight `dpo_beta`) against the rejected one.

Rows are turned into conversations (a plain-text prompt becomes a user turn, a plain reply an assistant turn, the
job's system prompt is added), so TRL renders them with the same chat template as SFT. Rows without a prompt column
must hold whole conversations in chosen and rejected that share their first turns; the shared turns are the prompt,
as they are where a prompt column comes beside whole conversations (UltraFeedback's repeats their first user turn).
Where only one of them is a whole conversation and the other the reply alone, its turns before its reply are the
prompt, and the prompt column's copy of them is left out.
Anthropic HH-RLHF's rows are such conversations written as text ("\\n\\nHuman: ...\\n\\nAssistant: ..."), read as turns.
TRL's DPO tokenizes the conversations itself (apply_chat_template, which adds no BOS) when its trainer is made:
meanwhile the tokenizer's template puts its BOS first where it writes none (engine.data.tokenizing.bos_first), so a
base model whose tokenizer adds a BOS (Llama 3, Gemma given ChatML) trains on the tokens SFT, the chat and llama.cpp
give it. ORPO renders the text and puts the tokenizer's BOS before it itself wherever the tokenizer has one: it is
told of none where the tokenizer adds none to text (`_orpo_trainer`), so it too follows SFT's rule.

Pairs longer than max_seq_length (the prompt with its chosen or its rejected reply): TRL 1.15 keeps the first
max_seq_length tokens of each (DPO's truncation_mode "keep_start", ORPO cuts the reply to the room the prompt leaves),
and a pair whose prompt alone fills max_seq_length has no reply left: DPO drops it, ORPO would train on the prompt
alone, so the engine leaves such pairs out for both. How many were cut and left out is a note of the run's status.
"""

from pathlib import Path

from engine.core.errors import UserError
from engine.core.hardware import choose_placement
from engine.data.formats import chat_turns, sharegpt_pair, transcript_turns, validate_row, whole_conversation
from engine.data.tokenizing import bos_first, leading_bos, length_notes, render
from engine.spec.objectives import read_rows
from engine.training.steps import total_steps

METRICS = {  # runlog name: TRL log key (both trainers log these per step)
    "margin": "rewards/margins",
    "chosen_reward": "rewards/chosen",
    "rejected_reward": "rewards/rejected",
    "accuracy": "rewards/accuracies",
}


def to_pair(row: dict, row_no: int, source: str, system_prompt: str = "") -> dict:
    """One preference row as {"prompt", "chosen", "rejected"} message lists."""
    from trl import extract_prompt

    where = f"{source}: row {row_no}"
    validate_row(row, "preference", row_no, source)
    row = sharegpt_pair(row, where)  # LLaMA-Factory's ShareGPT pairs: the conversation is the prompt
    prompt, chosen, rejected = (
        chat_turns(row[k], k, where) if isinstance(row.get(k), list) else row.get(k)
        for k in ("prompt", "chosen", "rejected")
    )  # message lists read as chat data reads them: content parts as their text, no empty system turn
    prompt = prompt if isinstance(prompt, (str, list)) else None  # validate_row let through only these, or no prompt
    transcripts = (transcript_turns(chosen), transcript_turns(rejected)) if prompt is None else ()
    if transcripts and all(transcripts):  # Anthropic HH-RLHF's text
        chosen, rejected = transcripts
    if whole_conversation(chosen) and whole_conversation(rejected):
        # whole conversations hold their prompt, so a prompt column beside them is a copy of their first turns
        # (UltraFeedback's), which would else come twice: the user's question, then the same question again
        split = extract_prompt({"chosen": chosen, "rejected": rejected})
        prompt, chosen, rejected = split["prompt"], split["chosen"], split["rejected"]
        if not prompt:
            raise UserError(f"{where}: 'chosen' and 'rejected' share no first turn, so there is no prompt to answer.")
    elif prompt is not None and (whole_conversation(chosen) or whole_conversation(rejected)):
        # one side a whole conversation, the other its reply alone: the conversation's turns before its reply are
        # the prompt, which the prompt column repeats (else the question came twice on one side only)
        key = "chosen" if whole_conversation(chosen) else "rejected"
        prompt, reply = _split_reply(chosen if key == "chosen" else rejected, key, where)
        chosen, rejected = (reply, rejected) if key == "chosen" else (chosen, reply)
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if system_prompt and prompt[0]["role"] != "system":
        prompt.insert(0, {"role": "system", "content": system_prompt})
    return dict(prompt=prompt, chosen=_reply(chosen), rejected=_reply(rejected))


def _split_reply(turns: list[dict], key: str, where: str) -> tuple[list[dict], list[dict]]:
    """A whole conversation as (its turns up to the last that is not the assistant's, the assistant's reply after)."""
    cut = max(i for i, turn in enumerate(turns) if turn["role"] != "assistant") + 1
    if cut == len(turns):
        raise UserError(f"{where}: '{key}' ends with a '{turns[-1]['role']}' turn; it should end with the reply.")
    return turns[:cut], turns[cut:]


def _reply(value) -> list[dict]:
    return [{"role": "assistant", "content": value}] if isinstance(value, str) else value


def without_ties(pairs: list[dict], log, note=None) -> list[dict]:
    """The pairs whose chosen and rejected replies differ. Two equal replies prefer nothing: the pair's DPO loss is
    log 2 whatever the weights, without a gradient, and it counts as ranked wrong in the accuracy. How many were left
    out is logged and told to `note(text)`; a UserError when every pair is such a tie."""
    kept = [pair for pair in pairs if pair["chosen"] != pair["rejected"]]
    if not kept:
        raise UserError("Every pair's chosen and rejected replies are the same, so there is no preference to learn.")
    if len(kept) < len(pairs):
        said = (
            f"{len(pairs) - len(kept)} of {len(pairs)} preference pairs have the same chosen and rejected reply, "
            "which teaches no preference, and were left out."
        )
        log(f"note: {said}")
        if note is not None:
            note(said)
    return kept


def fit_pairs(pairs: list[dict], tok, max_len: int, source: str, log, note=None) -> list[dict]:
    """The pairs without those whose prompt alone fills `max_len` tokens (no reply left to compare); how many pairs
    are longer than `max_len` (their prompt with the chosen or the rejected reply, rendered by the chat template as
    TRL renders them) and how many were left out is logged and told to `note(text)` (length_notes' sentence). A
    chat template that cannot render a pair is a UserError naming its row of `source`."""

    def tokens(messages, prompt: bool, where: str) -> int:  # as apply_chat_template(tokenize=True) counts them
        return len(tok(render(tok, messages, prompt, where), add_special_tokens=False).input_ids)

    kept, longer = [], 0
    for i, pair in enumerate(pairs, 1):
        where = f"{source}: row {i}"
        replies = (pair["prompt"] + pair["chosen"], pair["prompt"] + pair["rejected"])
        longer += max(tokens(whole, False, where) for whole in replies) > max_len
        if tokens(pair["prompt"], True, where) < max_len:
            kept.append(pair)
    for said in length_notes(len(pairs), longer, len(pairs) - len(kept), 0, max_len, "preference pairs"):
        log(f"note: {said}")
        if note is not None:
            note(said)
    if not kept:
        raise UserError(
            f"Every prompt is {max_len} tokens or longer, so no pair has a reply within max_seq_length {max_len}; "
            "raise max_seq_length."
        )
    return kept


def train_preference(spec, run_dir: Path, runlog, resume: bool, should_stop, log) -> None:
    """Train `spec` (objective dpo or orpo) into `run_dir`, with the SFT loop's metrics, checkpoints and cancel."""
    import torch
    from datasets import Dataset

    from engine.models.loading import load_for_training
    from engine.training.trl_run import TrlRun, prepare

    torch.manual_seed(spec.seed)
    placement = choose_placement(spec.device, spec.dtype)
    prepare(placement)
    runlog.set(state="loading", message="loading the model")
    model, tok = load_for_training(spec, placement, log)
    source = Path(spec.data).name
    rows = read_rows(spec, log, runlog.loading(log), should_stop)
    pairs = [to_pair(r, i, source, spec.system_prompt) for i, r in enumerate(rows, 1)]
    pairs = fit_pairs(without_ties(pairs, log, runlog.note), tok, spec.max_seq_length, source, log, runlog.note)
    run = TrlRun(spec, run_dir, runlog, should_stop, log, model, tok, placement, total_steps(spec, len(pairs)), resume)
    common = dict(
        train_dataset=Dataset.from_list(pairs),
        processing_class=tok,
        callbacks=[run.callback(METRICS)],
        optimizers=(run.opt, run.sched),
    )
    if spec.objective == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = run.args(ORPOConfig, beta=spec.dpo_beta, max_length=spec.max_seq_length, remove_unused_columns=False)
        trainer = _orpo_trainer(ORPOTrainer)(model=model, args=args, **common)
        log(f"orpo: {len(pairs)} pairs, odds-ratio weight {spec.dpo_beta}, no reference model")
    else:
        from trl import DPOConfig, DPOTrainer

        args = run.args(DPOConfig, beta=spec.dpo_beta, max_length=spec.max_seq_length)
        with bos_first(tok):  # the pairs tokenized as render() writes them, BOS first (see the docstring)
            trainer = DPOTrainer(model=model, ref_model=_full_reference(spec, placement, log), args=args, **common)
        if "ref" in getattr(model, "peft_config", {}):
            model.delete_adapter("ref")  # the reference is the base: the adapter switched off (see the docstring)
        reference = "a frozen copy of the weights" if spec.method == "full" else "the base model, adapter off"
        log(f"dpo: {len(pairs)} pairs, beta {spec.dpo_beta}, reference: {reference}")
    run.keep_order(trainer)
    run.train(trainer)


def _orpo_trainer(base):
    """TRL's ORPOTrainer (`base`) putting the BOS first only as SFT does (engine.data.tokenizing.leading_bos): where the
    tokenizer adds one to text and the rendered prompt has none. TRL puts bos_token_id first wherever the tokenizer has
    one, so a tokenizer that names a BOS but adds none (Qwen-style: bos_token set, add_bos_token false) trained ORPO on
    a BOS that SFT, the chat and llama.cpp never give the model. Its rows are tokenized with the tokenizer's BOS hidden
    (TRL then adds none), after the chat template has rendered them with it; the BOS is the tokenizer's again after."""

    class Trainer(base):
        def tokenize_row(self, feature, model=None):
            tok = self.processing_class
            if tok.bos_token_id is None or leading_bos(tok):
                return super().tokenize_row(feature, model)
            own = tok.bos_token
            tok.bos_token = None  # a BOS written by the template is still read from the text as that token
            try:
                return super().tokenize_row(feature, model)
            finally:
                tok.bos_token = own

    return Trainer


def _full_reference(spec, placement, log):
    """Full fine-tuning's DPO reference: a second, frozen copy of the starting weights (None with LoRA)."""
    if spec.method != "full":
        return None
    from engine.models.loading import load_model, resolve_model

    log("dpo: full fine-tuning keeps a frozen copy of the model as the reference (twice the weight memory)")
    ref = load_model(resolve_model(spec.model, log), placement, trust_remote_code=spec.trust_remote_code)
    return ref.eval().requires_grad_(False)
