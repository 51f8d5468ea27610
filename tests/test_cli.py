"""The command line as a user types it: flags checked before any work, one sentence and the right exit status."""

import pytest

from engine.__main__ import main


def run(capsys, *argv):
    """(exit status, stdout, stderr) of `python -m engine *argv`, in this process."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse refuses a flag by exiting 2
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "argv",
    [
        ["estimate", "--model", "Qwen/Qwen3-0.6B", "--vram", "inf"],
        ["estimate", "--model", "Qwen/Qwen3-0.6B", "--ram", "inf"],
        ["chat", "m", "--prompt", "hi", "--temperature", "nan"],
        ["chat", "m", "--prompt", "hi", "--temperature", "-1"],
    ],
)
def test_numbers_that_are_not_finite_or_below_0_are_refused(capsys, argv):
    """--vram inf ended in an OverflowError report; --temperature nan answered nothing and exited 0."""
    code, _, err = run(capsys, *argv)
    assert code == 2 and f"argument {argv[-2]}: " in err, err
    assert "Traceback" not in err and "report" not in err


@pytest.mark.parametrize(
    "argv, says",
    [
        (["eval", "m", "--data", "q.jsonl", "--limit", "-3"], "argument --limit: must be at least 0, not -3"),
        (
            ["data", "inspect", "d.jsonl", "--max-seq-length", "-5"],
            "argument --max-seq-length: must be above 0, not -5",
        ),
        (["eval", "m", "--data", "q.jsonl", "--name", "Nova"], "give --name and --maker together"),
        (["eval", "m", "--data", "q.jsonl", "--maker", "Tunesmith Labs"], "give --name and --maker together"),
    ],
)
def test_eval_and_inspect_flags_that_were_taken_silently(capsys, argv, says):
    """--limit -3 evaluated one row (read_cases stops once it has 'limit' or more), inspect said rows were "longer than
    -5 tokens", and --name without --maker (or the other way) dropped the identity check without a word."""
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "") and says in err and "Traceback" not in err, err


@pytest.mark.parametrize("token", ["hf_x", ""])
def test_export_push_target_is_checked_before_the_export(capsys, tmp_path, monkeypatch, tiny_llama, token):
    """A repository name that is not one, or no token, was found only after the whole export (a GGUF takes minutes);
    the Export tab checks it first (engine.api.exports.start_export)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no stored login
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    else:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    out = tmp_path / "merged"
    repo = "not a repo" if token else "user/name"
    code, stdout, err = run(
        capsys, "export", str(tiny_llama), "--format", "merged16", "--out", str(out), "--push-to-hub", repo
    )
    assert (code, stdout) == (2, ""), err
    assert ("is not a hub repository name" if token else "needs a write token") in err.splitlines()[-1]
    assert not out.exists() and "merged" not in err


@pytest.mark.parametrize("flag", [["--vram", "80"], ["--gpus", "4"], ["--gpus", "1"]])
def test_estimate_machine_with_gpus_or_vram_is_refused(capsys, flag):
    """--machine kaggle-2xt4 --vram 80 planned for 14.6 GiB and 2 GPUs without a word: the machine preset replaced
    what the user typed."""
    code, out, err = run(capsys, "estimate", "--model", "Qwen/Qwen3-0.6B", "--machine", "kaggle-2xt4", *flag)
    assert (code, out) == (2, "") and "--machine sets the GPUs and their memory" in err, err


def test_the_run_process_given_a_job_file_that_is_not_there_says_so(capsys, tmp_path):
    """`python -m engine.run runs/<id>/job.yaml` (how a run replays from its job.yaml alone) with a mistyped path
    ended in a FileNotFoundError traceback from writing status.json into a folder that does not exist."""
    from engine.run import main as run_main

    for job in (tmp_path / "no-run" / "job.yaml", tmp_path / "job.yaml"):
        assert run_main([str(job)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"error: Job file '{job}' does not exist."]
    assert list(tmp_path.iterdir()) == []  # no status.json beside a job that is not there


@pytest.mark.parametrize("typed, sent", [([], "You are Nova."), (["--system", ""], None), (["--system", "Hi"], "Hi")])
def test_chat_with_a_run_starts_with_the_system_prompt_it_trained_with(capsys, monkeypatch, tmp_path, typed, sent):
    """The Chat tab and eval start a run's chat with its job's system_prompt, after which the tuned model learned its
    replies; `chat runs/<id>` sent none unless --system repeated it, so the same run answered differently here."""
    from engine import api

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "job.yaml").write_text(api.JobSpec(model="m", data="d", system_prompt="You are Nova.").to_yaml())
    asked = []

    class Chat:
        def __init__(self, source):
            assert source == str(run_dir)

        def reply(self, messages, **kw):
            asked.append(messages)
            return "I am Nova."

    monkeypatch.setattr(api, "Chat", Chat)
    code, out, err = run(capsys, "chat", str(run_dir), "--prompt", "Who are you?", *typed)
    assert (code, out) == (0, "I am Nova.\n"), err
    system = [{"role": "system", "content": sent}] if sent is not None else []
    assert asked == [[*system, {"role": "user", "content": "Who are you?"}]]


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_chat_out_of_memory_names_this_commands_flags(capsys, monkeypatch, stream):
    """A reply out of GPU memory said to lower 'Max new tokens' or clear the chat: the Chat tab's box and button,
    which `python -m engine chat` has neither of; it names --max-new-tokens and the prompt."""
    from engine import api
    from engine.chat.infer import OUT_OF_MEMORY

    class Chat:
        def __init__(self, source):
            pass

        def reply(self, messages, **kw):
            raise api.UserError(OUT_OF_MEMORY)

        def stream(self, messages, **kw):
            yield "I am"
            raise api.UserError(OUT_OF_MEMORY)

    monkeypatch.setattr(api, "Chat", Chat)
    code, _, err = run(capsys, "chat", "Qwen/Qwen3-0.6B", "--prompt", "Who are you?", *stream)
    assert code == 2 and err.strip().splitlines()[-1] == (
        "error: The GPU ran out of memory for this reply; lower --max-new-tokens, shorten the prompt or the system "
        "prompt, or pick a smaller model."
    ), err


def test_chat_and_eval_take_an_adapter_folder_without_a_tokenizer(capsys, tmp_path, tiny_llama, identity_file):
    """A run's checkpoints/step-N/ (or an adapter saved without its tokenizer) took the adapter folder for the
    tokenizer's and ended in transformers' "Couldn't instantiate the backend tokenizer" report (exit 1); export took
    the base model's tokenizer all along."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    adapter = tmp_path / "step-000002"
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    assert not list(adapter.glob("tokenizer*"))
    code, out, err = run(capsys, "chat", str(adapter), "--prompt", "Who are you?", "--max-new-tokens", "3")
    assert code == 0 and out.strip(), err
    argv = ["eval", str(adapter), "--data", str(identity_file), "--limit", "1", "--max-new-tokens", "2", "--no-save"]
    code, out, err = run(capsys, *argv)
    assert code == 0 and '"cases": 1' in out, err


def test_a_checkpoint_folder_chats_with_its_runs_tokenizer(tmp_path):
    """checkpoints/step-N/ (or best/step-N/) named alone: the run's tokenizer/ beside it is the one it trained with
    (its chat template may be one the job named), not the base model's."""
    from engine.chat.infer import locate

    ckpt = tmp_path / "run" / "checkpoints" / "step-000002"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_config.json").write_text('{"base_model_name_or_path": "base"}')
    (ckpt / "adapter_model.safetensors").write_bytes(b"")
    assert locate(str(ckpt)) == ("base", ckpt, None)
    (tmp_path / "run" / "tokenizer").mkdir()
    (tmp_path / "run" / "tokenizer" / "tokenizer_config.json").write_text("{}")
    assert locate(str(ckpt)) == ("base", ckpt, tmp_path / "run" / "tokenizer")
    best = tmp_path / "run" / "best" / "step-000002"  # the lowest-validation-loss copy: the same tokenizer
    best.mkdir(parents=True)
    (best / "adapter_config.json").write_text('{"base_model_name_or_path": "base"}')
    (best / "adapter_model.safetensors").write_bytes(b"")
    assert locate(str(best)) == ("base", best, tmp_path / "run" / "tokenizer")


@pytest.mark.parametrize("cmd", [["chat", "{f}", "--prompt", "hi"], ["estimate", "--model", "{f}"]])
def test_a_file_given_as_the_model_is_not_called_missing(capsys, identity_file, cmd):
    """A data file (or any file) given as the model was "Model folder '...' does not exist", which it does."""
    code, out, err = run(capsys, *[a.format(f=identity_file) for a in cmd])
    assert (code, out) == (2, "") and "does not exist" not in err
    assert f"error: '{identity_file}' is a file, not a model folder" in err, err


def test_a_checkpoint_folder_chats_with_its_runs_system_prompt(tmp_path):
    """checkpoints/step-N/ (or best/step-N/) named alone started its chat with no system turn, though it learned its
    replies after its run's."""
    from engine import api

    run_dir = tmp_path / "run"
    for ckpt in (run_dir / "checkpoints" / "step-000002", run_dir / "best" / "step-000002"):
        ckpt.mkdir(parents=True)
        assert api.system_prompt(str(ckpt)) is None  # not a run's: nothing to go by
    (run_dir / "job.yaml").write_text(api.JobSpec(model="m", data="d", system_prompt="You are Nova.").to_yaml())
    for ckpt in (run_dir / "checkpoints" / "step-000002", run_dir / "best" / "step-000002"):
        assert api.system_prompt(str(ckpt)) == "You are Nova."


@pytest.mark.parametrize("flag, value", [("--vram", "24000"), ("--vram", "1e308"), ("--ram", "1e308")])
def test_estimate_refuses_memory_no_machine_has(capsys, flag, value):
    """--vram 24000 (megabytes typed for gigabytes) planned for a 24,000 GiB card and said everything fits; 1e308
    ended in an OverflowError report."""
    code, out, err = run(capsys, "estimate", "--model", "Qwen/Qwen3-0.6B", flag, value)
    assert (code, out) == (2, "") and f"argument {flag}: GiB, at most " in err and "Traceback" not in err, err


def test_estimate_plans_for_the_gpus_a_run_trains_on(capsys, monkeypatch):
    """A run (and the app's badge and preset) trains on every visible GPU; `estimate` without --gpus planned for one.
    On two 24 GB cards a 4B full fine-tune is sharded over both (FSDP2), a different plan from one GPU's: the command
    said one thing and the run did another. --gpus still overrides the count."""
    import json

    from engine import api
    from engine.training.launch import plan_launch

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "23")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    monkeypatch.setattr(api, "gpus_found", lambda: ["NVIDIA GeForce RTX 4090"] * 2)
    model, method = "Qwen/Qwen3-4B", "full"
    code, out, err = run(capsys, "estimate", "--model", model, "--method", method)
    assert code == 0, err
    said = json.loads(out)
    runs_on = plan_launch(api.JobSpec(model=model, data="-", method=method), found=len(api.gpus_found())).processes
    assert said["gpus"] == runs_on == 2
    assert said["plan"] == api.estimate(model, method, gpus=runs_on)["plan"]  # the plan the run makes with them
    code, out, err = run(capsys, "estimate", "--model", model, "--method", method, "--gpus", "1")
    assert code == 0, err
    one = json.loads(out)
    assert one["gpus"] == 1 and one["plan"] != said["plan"]


def test_estimate_plans_for_the_one_gpu_a_dpo_run_trains_on(capsys, monkeypatch):
    """DPO, ORPO and GRPO train on one GPU however many are visible (engine.training.launch); `estimate` planned per
    GPU of both cards, a sharded full fine-tune the run never makes. --objective says which run to plan for."""
    import json

    from engine import api
    from engine.training.launch import plan_launch

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "23")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    monkeypatch.setattr(api, "gpus_found", lambda: ["NVIDIA GeForce RTX 4090"] * 2)
    model, method = "Qwen/Qwen3-4B", "full"
    code, out, err = run(capsys, "estimate", "--model", model, "--method", method, "--objective", "dpo")
    assert code == 0, err
    said = json.loads(out)
    spec = api.JobSpec(model=model, data="-", method=method, objective="dpo")
    assert said["gpus"] == plan_launch(spec, found=len(api.gpus_found())).processes == 1
    # the one card's DPO run, which frees no gradient in the backward (an SFT run's may) and so does not fit
    assert said == api.estimate(model, method, gpus=1, objective="dpo")
    assert not said["fits"] and "on each GPU" not in said["reason"]
    code, out, err = run(capsys, "estimate", "--model", model, "--objective", "dpo", "--gpus", "2")
    assert (code, out) == (2, "") and "DPO trains on one GPU for now; set gpus to 1." in err, err  # as the run says
    code, out, err = run(capsys, "estimate", "--model", model, "--method", method, "--objective", "sft")
    assert code == 0 and json.loads(out)["gpus"] == 2, err
    machine = ["--model", "Qwen/Qwen3-0.6B", "--machine", "kaggle-2xt4", "--ram", "32"]
    code, out, err = run(capsys, "estimate", *machine, "--objective", "grpo")  # one of its two T4s
    assert code == 0, err
    said = json.loads(out)
    assert (said["gpus"], said["dtype"], said["vram_budget_gib"]) == (1, "fp16", 14.6)
    code, out, err = run(capsys, "estimate", *machine)
    assert code == 0 and json.loads(out)["gpus"] == 2, err
    code, out, err = run(capsys, "estimate", "--model", model, "--objective", "dpo", "--train-embeddings")
    assert (code, out) == (2, "") and "--train-embeddings plans continued pretraining" in err, err
