"""Command line: the same calls the app makes.

  python -m engine train JOB.yaml [--detach]
  python -m engine resume RUN
  python -m engine chat MODEL_OR_RUN_OR_GGUF --prompt TEXT [--system TEXT] [--max-new-tokens N] [--stream]
      prints the reply, then its tokens and tokens/s on stderr
  python -m engine export RUN_OR_MODEL --format FORMAT --out DIR [--push-to-hub USER/REPO [--private]]
      FORMAT: lora, merged16, gguf-f16, gguf-bf16, gguf-q8_0, gguf-q4_k_m, gguf-q5_k_m, gguf-q6_k or
      gguf-mxfp4 (mixture-of-experts models: experts in MXFP4, the rest Q8_0)
      the upload reads its token from HF_TOKEN
  python -m engine eval RUN_OR_MODEL_OR_GGUF [...] [--data FILE] [--regex RE] [--reward JSON] [--name N --maker M]
      loss / perplexity and scored greedy answers as JSON (a run adds its base model), saved in the run's eval/;
      --seen-rows: a run that held no rows out is evaluated on the questions it trained on
  python -m engine data inspect FILE [--format F] [--model M] [--objective O]
  python -m engine estimate --model M [--method METHOD] [--objective O] [--vram GIB] [--gpus N | --machine NAME]
  python -m engine doctor
Exit status: 0 done, 1 the run failed, 2 bad input (one line on stderr says why), 130 interrupted (Ctrl-C), 143
terminated (SIGTERM; a followed run is cancelled with a checkpoint, as by Ctrl-C). Any other
error prints one line naming the file that holds its full report (exit 1).
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from engine.core.errors import UserError


class _Terminated(KeyboardInterrupt):
    """SIGTERM while following a run (`timeout`, a scheduler, a notebook's stop): the run, in its own session, kept
    training after this command ended; it is now cancelled with a checkpoint, as Ctrl-C does."""


def _on_term(signum, frame):
    raise _Terminated


class _StartAbandoned(KeyboardInterrupt):
    """A second Ctrl-C (or SIGTERM) while a run was being started: this command stops waiting for the start, which
    may have launched the run."""


class _HeldSignals:
    """Ctrl-C and SIGTERM held from the moment a run is asked for until it is followed.

    The run's process starts in its own session (a Ctrl-C in the terminal does not reach it), inside api.start or
    api.resume: a KeyboardInterrupt raised anywhere between its launch and the following loop left it training while
    this command said nothing was kept. Held, the signal is acted on once the handle is in hand (`release`, inside
    _follow's handler): the run is cancelled with a checkpoint, as during following. A second one stops the wait."""

    def __init__(self):
        import signal

        self.signum = None
        self.before = {sig: signal.signal(sig, self._hold) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _hold(self, signum, frame):
        if self.signum is not None:
            self.restore()
            raise _StartAbandoned
        self.signum = signum
        print("stopping: the run is cancelled once it has started (again to stop waiting)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        import signal

        for sig, handler in self.before.items():
            signal.signal(sig, handler)

    def release(self) -> None:
        """Hand the signals to the following loop (Ctrl-C's own handler, SIGTERM to _on_term) and raise the one held,
        if any, as they would have been raised there."""
        import signal

        self.restore()
        signal.signal(signal.SIGTERM, _on_term)
        if self.signum == signal.SIGTERM:
            raise _Terminated
        if self.signum is not None:
            raise KeyboardInterrupt


def _start(launch, detach: bool = False) -> int:
    """Start a run with `launch()` (api.start or api.resume) and follow it, Ctrl-C and SIGTERM held from before the
    launch until the following loop has the handle (_HeldSignals). `detach`: return once it has started, unless a
    Ctrl-C came meanwhile (then it is cancelled)."""
    held = _HeldSignals()
    try:
        handle = launch()
    except _StartAbandoned:  # its handlers are back already
        raise
    except BaseException:  # refused (a UserError) or failed before its process started: nothing to cancel
        held.restore()
        raise
    print(f"run: {handle.run_dir}", flush=True)
    if detach and held.signum is None:
        held.restore()
        return 0
    return _follow(handle, held)


def _follow(handle, held: _HeldSignals) -> int:
    from engine import api

    last, said, told = 0, "", 0
    try:
        held.release()  # a Ctrl-C or SIGTERM held while the run was started is raised here: the run is cancelled
        while True:
            st = api.poll(handle)
            if st.state == "loading" and st.message != said:  # loading the model, tokenizing: N of M rows
                print(st.message, flush=True)
                said = st.message
            for rec in st.metrics[last:]:
                print(
                    f"step {rec['step']}/{rec['total_steps']}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
                    f"{rec['tokens_per_s']:.0f} tok/s  eta {rec['eta_s']:.0f}s",
                    flush=True,
                )
            last = len(st.metrics)
            for note in st.notes[told:]:
                print(f"note: {note}", flush=True)
            told = len(st.notes)
            if st.finished:
                print(f"{st.state}: {st.message}  ({st.run_dir})", flush=True)
                return 0 if st.state == "done" else 1
            api.wait(handle, 0.5)  # returns as the run ends, so the command ends with it
    except KeyboardInterrupt as stop:
        code = 143 if isinstance(stop, _Terminated) else 130
        print("cancelling (a checkpoint is saved first)...", file=sys.stderr, flush=True)
        try:
            st = api.cancel(handle)
        except KeyboardInterrupt:  # a second Ctrl-C: the run, asked to stop, still saves its checkpoint on its own
            print(
                f"stopped waiting; the run saves its checkpoint and then stops on its own ({handle.run_dir})",
                file=sys.stderr,
                flush=True,
            )
            return code
        print(f"{st.state}: {st.message}  ({st.run_dir})", flush=True)
        return code


@contextlib.contextmanager
def _chat_memory_sentence():
    """The chat's out-of-memory sentence in this command's words: the Chat tab's names its 'Max new tokens' box and
    'clear the chat', which a one-prompt command has no such thing as."""
    from engine.chat.infer import OUT_OF_MEMORY

    try:
        yield
    except UserError as e:
        if str(e) != OUT_OF_MEMORY:
            raise
        raise UserError(
            "The GPU ran out of memory for this reply; lower --max-new-tokens, shorten the prompt or the system "
            "prompt, or pick a smaller model."
        ) from None


def _above_0(kind):
    """An argparse type: a number of `kind` above 0 (--batch 0 was taken as "the preset's", --vram -3 as a card)."""
    return _number(kind, 0, "above")


def _number(kind, low: float, how: str):
    """An argparse type: a finite number of `kind` `how` ("above" or "at least") `low`. float() takes "inf" and "nan":
    --vram inf ended in an OverflowError report, --temperature nan in an empty reply that exited 0."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not math.isfinite(value) or not (value > low if how == "above" else value >= low):
            raise argparse.ArgumentTypeError(f"must be {how} {low:g}, not {text}")
        return value

    return parse


def _gib(most: float):
    """An argparse type: GiB above 0 and at most `most`, which no machine has: --vram 24000 (megabytes typed) planned
    for a 24,000 GiB card that fits anything, and 1e308 ended in an OverflowError report."""
    above_0 = _above_0(float)

    def parse(text: str):
        value = above_0(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"GiB, at most {most:,.0f}, not {text}")
        return value

    return parse


def _named_run(source: str) -> str:
    """`source`, or the folder of the run it names by id (as `resume` and the app's run list name runs)."""
    from engine import api

    folder = api.runs_dir() / source
    return str(folder) if not Path(source).exists() and (folder / "job.yaml").is_file() else source


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine", description="Tunesmith: fine-tune, chat, export.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="start a run from a job.yaml and follow it")
    p.add_argument("job")
    p.add_argument("--detach", action="store_true", help="print the run folder and return at once")
    p = sub.add_parser("resume", help="continue a cancelled or failed run")
    p.add_argument("run")
    p = sub.add_parser("chat", help="one reply from a run, a model folder, a hub id or a .gguf file")
    p.add_argument("source")
    p.add_argument("--prompt", required=True)
    p.add_argument(
        "--system",
        default=None,
        help="system prompt (default: a run's own, the one it trained with, as the Chat tab starts; '': none)",
    )
    p.add_argument("--max-new-tokens", type=_above_0(int), default=256)
    p.add_argument("--temperature", type=_number(float, 0, "at least"), default=0.0, help="0: greedy")
    p.add_argument("--stream", action="store_true")
    p = sub.add_parser("export", help="export a run or model")
    p.add_argument("source")
    p.add_argument("--format", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--push-to-hub", metavar="USER/REPO", default=None, help="upload the finished export (HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="create the hub repository private")
    p = ev = sub.add_parser("eval", help="evaluate runs, models and .gguf files on reference answers, as JSON")
    p.add_argument("sources", nargs="+", metavar="RUN_OR_MODEL_OR_GGUF")
    p.add_argument("--data", default="", help="questions with reference answers (default: the run's held-out rows)")
    p.add_argument("--regex", default="", help="also score: the reply matches this regular expression")
    p.add_argument(
        "--reward", action="append", default=[], help='a GRPO reward preset as JSON, e.g. {"preset": "length"}'
    )
    p.add_argument("--name", default="", help="identity check: the assistant's name (found in identity data otherwise)")
    p.add_argument("--maker", default="", help="identity check: its maker")
    p.add_argument("--no-base", action="store_true", help="skip the base model of a run")
    p.add_argument(
        "--seen-rows",
        action="store_true",
        help="without --data, a run that held no rows out is evaluated on the questions it trained on",
    )
    p.add_argument(
        "--limit",
        type=_number(int, 0, "at least"),
        default=None,
        help="evaluate the first N rows (default 100; 0: all)",
    )
    p.add_argument("--max-new-tokens", type=_above_0(int), default=None)
    p.add_argument("--no-save", action="store_true", help="print only; write no results folder")
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    d = dsub.add_parser("inspect", help="detect the format and show a rendered sample as JSON")
    d.add_argument("file")
    d.add_argument("--format", default="auto")
    d.add_argument("--model", default=None, help="render with this model's tokenizer and chat template")
    d.add_argument("--map", action="append", metavar="COLUMN=FIELD", help="use COLUMN as FIELD, e.g. q=instruction")
    d.add_argument(
        "--max-seq-length", type=_above_0(int), default=1024, help="count the rows this length would truncate"
    )
    d.add_argument("--template", default="auto", help="named chat template (chatml, llama-3, mistral, ...)")
    d.add_argument("--config", default="", help="hub datasets: configuration name")
    d.add_argument("--split", default="train", help="hub datasets: split")
    d.add_argument(
        "--objective",
        default="",
        help="sft, pretrain, dpo, orpo or grpo: the format it reads rows in that could be read two ways "
        "(UltraFeedback's: preference pairs for dpo and orpo, chat for sft)",
    )
    sub.add_parser("doctor", help="versions, GPU and free memory and disk, as JSON")
    p = est = sub.add_parser(
        "estimate", help="the plan of a training run, its peak VRAM and RAM, whether it fits, and its preset, as JSON"
    )
    p.add_argument("--model", required=True)
    p.add_argument("--method", default="qlora", choices=["qlora", "lora", "full"])
    p.add_argument("--seq", type=_above_0(int), default=None, help="sequence length (default: the preset's)")
    p.add_argument("--batch", type=_above_0(int), default=None, help="micro-batch (default: the preset's)")
    p.add_argument("--rank", type=_above_0(int), default=16)
    p.add_argument("--vram", type=_gib(1024), default=None, help="plan for a card of this many GiB instead of this one")
    p.add_argument("--ram", type=_gib(1 << 20), default=None, help="plan for this many GiB of free host RAM instead")
    p.add_argument(
        "--gpus",
        type=_above_0(int),
        default=None,
        help="plan per GPU of a run on this many (default: the GPUs found, as a run trains on all of them; "
        "full: FSDP2 shards)",
    )
    p.add_argument("--machine", default=None, help="plan for a machine preset (presets/machines.yaml): kaggle-2xt4")
    p.add_argument(
        "--objective",
        default=None,
        choices=["sft", "pretrain", "dpo", "orpo", "grpo"],
        help="plan for a run of this objective (default: sft; pretrain with --train-embeddings): dpo, orpo and grpo "
        "train on one GPU however many are found",
    )
    p.add_argument(
        "--train-embeddings",
        action="store_true",
        help="plan continued pretraining that also trains embed_tokens and lm_head (a job's train_embeddings)",
    )
    args = ap.parse_args(argv)
    if args.cmd == "eval" and bool(args.name) != bool(args.maker):  # the check takes both; one was dropped unsaid
        ev.error("give --name and --maker together (or neither: an identity dataset's answers name them)")
    if args.cmd == "estimate" and args.machine and (args.gpus is not None or args.vram is not None):
        est.error("--machine sets the GPUs and their memory; leave out --gpus and --vram")  # it replaced them unsaid
    if args.cmd == "estimate" and args.train_embeddings and args.objective not in (None, "pretrain"):
        est.error("--train-embeddings plans continued pretraining; leave out --objective or give pretrain")

    from engine import api

    try:
        if args.cmd == "train":
            from engine.spec.jobspec import read_job, with_paths_beside

            spec = with_paths_beside(read_job(args.job), Path(args.job).parent)
            # the command line may run its own reward code
            return _start(lambda: api.start(spec, allow_code=True), args.detach)
        if args.cmd == "resume":
            return _start(lambda: api.resume(args.run, allow_code=True))
        if args.cmd == "chat":
            source = _named_run(args.source)
            chat = api.Chat(source)
            # the tuned model learned its replies after its run's system turn (a GGUF file's, from its Modelfile)
            system = args.system if args.system is not None else api.system_prompt(source) or ""
            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": args.prompt}
            ]
            stats = api.ReplyStats()
            kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, stats=stats)
            with _chat_memory_sentence():
                if args.stream:
                    shown = ""
                    for text in chat.stream(msgs, **kw):
                        print(text[len(shown) :], end="", flush=True)
                        shown = text
                    print()
                else:
                    print(chat.reply(msgs, **kw))
            # on stderr, so stdout stays the reply alone (scripts read it)
            if stats.note:  # the model's context cut the reply
                print(f"note: {stats.note}", file=sys.stderr)
            print(f"{stats.tokens} tokens in {stats.seconds:.2f} s: {stats.tokens_per_s:.1f} tokens/s", file=sys.stderr)
            return 0
        if args.cmd == "export":
            if args.push_to_hub:  # before the export, as the Export tab does: a GGUF takes minutes to find this out
                from engine.models.hub import check_target

                check_target(args.push_to_hub)
            res = api.export(_named_run(args.source), args.format, args.out, log=lambda m: print(m, file=sys.stderr))
            print(
                json.dumps(
                    dict(
                        path=str(res.path), format=res.format, files=res.files, seconds=res.seconds, checks=res.checks
                    ),
                    indent=2,
                ),
                flush=True,
            )
            if args.push_to_hub:
                from engine.models.hub import push

                push(res.path, args.push_to_hub, private=args.private, log=lambda m: print(m, file=sys.stderr))
            return 0
        if args.cmd == "eval":
            from engine.export.evaluate import parse_rewards

            out = api.evaluate(
                [_named_run(s) for s in args.sources],
                args.data,
                base=not args.no_base,
                regex=args.regex,
                rewards=parse_rewards(args.reward),
                identity=(args.name, args.maker) if args.name and args.maker else None,
                limit=args.limit,
                max_new_tokens=args.max_new_tokens,
                save=not args.no_save,
                log=lambda m: print(m, file=sys.stderr),
                seen_rows=args.seen_rows,
            )
            print(json.dumps(out, indent=2, ensure_ascii=False))
            return 0
        if args.cmd == "data":
            from engine.data.formats import parse_map

            info = api.inspect_data(
                args.file,
                args.format,
                args.model,
                parse_map(args.map),
                args.max_seq_length,
                args.template,
                args.config,
                args.split,
                objective=args.objective,
            )
            print(json.dumps(info, indent=2, ensure_ascii=False))
            return 0
        if args.cmd == "estimate":
            if args.machine:
                from engine.models.machines import machine

                found = machine(args.machine).gpus
            else:
                found = len(api.gpus_found())
            objective = args.objective or ("pretrain" if args.train_embeddings else "sft")
            out = api.estimate(
                args.model,
                args.method,
                args.seq,
                args.batch,
                args.rank,
                args.vram,
                args.ram,
                # a run trains on every visible GPU but a DPO, ORPO or GRPO run on one (engine.training.launch):
                # its plan is per GPU of those
                gpus=args.gpus or api.run_gpus(objective, found),
                machine=args.machine,
                train_embeddings=args.train_embeddings,
                objective=objective,  # the plan differs by it too: only sft and pretrain free gradients early
            )
            print(json.dumps(out, indent=2))
            return 0
        if args.cmd == "doctor":
            print(json.dumps(api.doctor(), indent=2))
            return 0
    except api.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except _StartAbandoned:  # pressed twice while the run was started: it may be running, as nothing here can tell
        where = args.run if args.cmd == "resume" else f"a new folder in {api.runs_dir()}"
        print(
            f"stopped waiting for the run to start; it may have started and train on in the background ({where}): "
            "cancel it from the app's Train tab, or resume it here and press Ctrl-C once.",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:  # Ctrl-C in export, chat or eval, which work in this process
        # an export writes under a temporary name, removed on the way out (engine.core.files.new_folder)
        print(f"{args.cmd} interrupted; nothing unfinished was kept.", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or an unforeseen failure: one line here, the traceback in a file
        report = _write_report(args.cmd)
        first = str(e).splitlines()[0][:200] if str(e) else ""
        print(
            f"error: {args.cmd} stopped with {type(e).__name__}: {first}; the full report is in {report}",
            file=sys.stderr,
        )
        return 1
    return 2


def _write_report(cmd: str) -> str:
    """Write the current exception's traceback to a new file in the temporary folder and return its path."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix=f"tunesmith-{cmd}-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
    with open(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
        f.write(f"python -m engine {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
    return path


if __name__ == "__main__":
    sys.exit(main())
