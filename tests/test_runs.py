"""Run lifecycle through real subprocesses: cancel mid-run, resume, QLoRA on the CPU, failures as sentences."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import failing_forward, log_of, resume_after_cut, tiny_spec, wait_for

from engine import api
from engine.training.steps import CHECKPOINT_FILES

ROOT = Path(__file__).resolve().parent.parent


def spec_for(model, data, **kw):
    base = dict(
        model=str(model),
        data=str(data),
        name="t",
        learning_rate=5e-3,
        batch_size=2,
        gradient_checkpointing=False,
        seed=0,
    )
    return api.JobSpec(**{**base, **kw})


def test_cancel_mid_run_then_resume_continues_steps_and_curve(tiny_qwen3, identity_file, runs):
    handle = api.start(spec_for(tiny_qwen3, identity_file, max_steps=300, save_every=1000))
    wait_for(handle, until=lambda st: st.step >= 3)
    st = api.cancel(handle)
    assert st.state == "cancelled", log_of(st)
    ckpts = sorted((st.run_dir / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == [f"step-{st.step:06d}"]
    assert {"adapter_model.safetensors", *CHECKPOINT_FILES} <= {f.name for f in ckpts[0].iterdir()}
    assert not list(ckpts[0].glob("*.pt"))  # no pickle
    assert not list((st.run_dir / "checkpoints").glob(".*partial"))  # nothing half-written
    assert not (st.run_dir / "adapter").exists()
    stopped_at = st.step
    assert 3 <= stopped_at < 300
    losses_before = [m["loss"] for m in st.metrics]

    again = wait_for(api.resume(st.run_dir))
    assert again.state == "done", log_of(again)
    steps = [m["step"] for m in again.metrics]
    assert steps == list(range(1, 301))
    assert [m["loss"] for m in again.metrics[:stopped_at]] == losses_before[:stopped_at]
    assert f"resume: from step-{stopped_at:06d}" in log_of(again)
    assert again.metrics[-1]["loss"] < losses_before[0]
    assert (again.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_a_resume_cancelled_while_loading_keeps_its_step(tiny_qwen3, identity_file, runs):
    """The resumed process starts at step 0 until its checkpoint is restored; cancelled then, the run history said
    "cancelled, step 0/0" as if its progress were gone."""
    st = wait_for(api.start(spec_for(tiny_qwen3, identity_file, max_steps=3)))
    assert st.state == "done", log_of(st)
    shutil.rmtree(st.run_dir / "adapter")  # made to look as if it died after its last checkpoint
    (st.run_dir / "status.json").write_text(json.dumps(dict(state="failed", message="x", step=3, total_steps=3)))
    handle = api.resume(st.run_dir)
    assert api.poll(handle).step == 3  # before the process has written a step of its own
    wait_for(handle, until=lambda s: s.state == "loading")
    cancelled = api.cancel(handle)
    assert cancelled.state == "cancelled" and (cancelled.step, cancelled.total_steps) == (3, 3), log_of(cancelled)


def test_resume_matches_an_uninterrupted_run(tiny_llama, identity_file, runs):
    """Optimizer, schedule, data order and RNG all come back: the resumed curve is the uninterrupted one."""
    full = wait_for(
        api.start(
            spec_for(
                tiny_llama,
                identity_file,
                max_steps=12,
                lr_schedule="cosine",
                warmup_steps=2,
                save_every=5,
                keep_checkpoints=5,
            )
        )
    )
    assert full.state == "done", log_of(full)
    cut = wait_for(
        api.start(
            spec_for(
                tiny_llama,
                identity_file,
                max_steps=12,
                lr_schedule="cosine",
                warmup_steps=2,
                save_every=5,
                keep_checkpoints=5,
                name="cut",
            )
        )
    )
    resumed = resume_after_cut(cut, 5, 12)  # as if the second run died after step 5
    assert resumed.state == "done", log_of(resumed)
    a = [m["loss"] for m in full.metrics]
    b = [m["loss"] for m in resumed.metrics]
    assert len(b) == 12
    assert b == pytest.approx(a, rel=1e-5)


def test_resume_mid_epoch_continues_with_the_same_batches(tiny_llama, runs, tmp_path):
    """Examples of many lengths, 3 a micro-batch (7 micro-batches an epoch): a run cut mid-epoch and resumed trains
    on the same micro-batches in the same order as an uninterrupted one (each step's real token count and loss)."""
    words = "the quick brown fox jumps over the lazy dog and runs far away".split()
    rows = [
        {"instruction": " ".join(words[: 2 + i % 5]), "input": "", "output": " ".join(words[: 1 + (7 * i) % 12])}
        for i in range(20)
    ]
    data = tmp_path / "lengths.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(max_steps=12, batch_size=3, save_every=4, keep_checkpoints=5, lr_schedule="constant")
    full = wait_for(api.start(spec_for(tiny_llama, data, **kw)))
    assert full.state == "done", log_of(full)
    assert "batches: right-padded rows" in log_of(full)  # the CPU runs plain transformers: padded rows as before
    cut = wait_for(api.start(spec_for(tiny_llama, data, name="cut", **kw)))
    resumed = resume_after_cut(cut, 4, 12)  # died at step 4 of epoch 0's 7 micro-batches
    assert resumed.state == "done", log_of(resumed)
    tokens = [m["tokens"] for m in full.metrics]
    assert len(set(tokens)) > 4  # the steps' batches differ, so the token counts tell them apart
    assert [m["tokens"] for m in resumed.metrics] == tokens
    assert [m["loss"] for m in resumed.metrics] == pytest.approx([m["loss"] for m in full.metrics], rel=1e-5)


def test_qlora_trains_on_cpu_through_bitsandbytes(tiny_qwen3, identity_file, runs):
    import bitsandbytes  # noqa: F401  the real library, on the CPU backend

    st = wait_for(
        api.start(spec_for(tiny_qwen3, identity_file, method="qlora", max_steps=30, gradient_checkpointing=True))
    )
    assert st.state == "done", log_of(st)
    assert st.metrics[-1]["loss"] < st.metrics[0]["loss"]
    timing = re.search(r"timing: first step [\d.]+ s, later steps [\d.]+ s \(median\)(.*)", log_of(st)).group(1)
    assert timing == "" or re.fullmatch(r"; the first step's extra \d+\.\d\d s is .*", timing)  # never negative
    chat = api.Chat(str(st.run_dir), device="cpu")
    assert isinstance(chat.reply([{"role": "user", "content": "Who are you?"}], max_new_tokens=8), str)


def test_missing_model_folder_is_refused_before_a_run_folder(identity_file, runs, tmp_path):
    with pytest.raises(api.UserError, match=f"Model folder '{tmp_path / 'no-such-model'}' does not exist"):
        api.start(spec_for(tmp_path / "no-such-model", identity_file, max_steps=2))
    url = "https://huggingface.co/Qwen/Qwen3-0.6B/tree/main"  # the model's page, copied from the browser
    with pytest.raises(api.UserError, match=f"^'{url}' is a web address; give its hub id 'Qwen/Qwen3-0.6B' instead.$"):
        api.start(spec_for(url, identity_file, max_steps=2))
    assert not runs.exists() or not list(runs.iterdir())


def test_a_model_newer_than_transformers_fails_with_a_sentence(tiny_llama, identity_file, runs, tmp_path):
    """An architecture the installed transformers does not know used to end the run with its ValueError, cut off."""
    model = tmp_path / "new-model"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(dict(config, model_type="llama99")))
    st = wait_for(api.start(spec_for(model, identity_file, max_steps=1)))
    assert st.state == "failed", log_of(st)
    assert st.message.startswith("'new-model' is a kind of model that transformers "), st.message
    assert st.message.endswith("update transformers (pip install -U transformers) or pick another model.")


def test_mistyped_lora_targets_are_told_the_linear_layer_names(tiny_llama):
    """The sentence used to list the first module names in sorted order: '', '0', '1', 'act_fn', ..."""
    from engine.core.hardware import choose_placement
    from engine.models.loading import add_lora, load_model

    model = load_model(tiny_llama, choose_placement("cpu"))
    with pytest.raises(api.UserError) as info:
        add_lora(model, api.JobSpec(model="m", data="d", target_modules=("qproj",)), log=lambda m: None)
    assert str(info.value) == (
        "None of the LoRA target modules ['qproj'] exist in this model; its linear layers are named "
        "['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']."
    )


def test_bad_dataset_row_fails_naming_file_and_row(tiny_llama, runs, tmp_path):
    """A bad row past the first ones (which are checked before the run starts) fails the run with a sentence."""
    data = tmp_path / "bad.jsonl"
    good = '{"instruction": "hi", "output": "yo"}\n'
    data.write_text(good * 59 + '{"instruction": "hi", "output": ""}\n')
    st = wait_for(api.start(spec_for(tiny_llama, data, max_steps=2)))
    assert st.state == "failed"
    assert st.message == "bad.jsonl: row 60: field 'output' is missing or empty."
    assert "Traceback" in log_of(st)  # the traceback goes to the log, the sentence to the user


def test_cancel_while_tokenizing_a_large_file(tiny_llama, runs, tmp_path):
    """200,000 rows: the status says how far tokenizing is, and a cancel ends the run within seconds as cancelled
    (the run's own stop, not the kill after 60 s)."""
    data = tmp_path / "big.jsonl"
    with open(data, "w") as f:
        for i in range(200_000):
            f.write(json.dumps({"instruction": f"What is {i} plus {i}?", "output": f"It is {2 * i}."}) + "\n")
    handle = api.start(spec_for(tiny_llama, data, max_steps=1))
    st = wait_for(
        handle, timeout=300, until=lambda st: re.fullmatch(r"tokenizing: [1-9][\d,]* of 200,000 rows", st.message)
    )
    assert st.state == "loading", st.message
    t0 = time.monotonic()
    st = api.cancel(handle)
    assert st.state == "cancelled" and st.message.startswith("Cancelled;"), st.message
    assert time.monotonic() - t0 < 10
    assert re.search(r"tokenizing: [1-9][\d,]* of 200,000 rows", log_of(st))


def test_cli_train_refuses_bad_data_or_model_before_a_run_folder(tiny_llama, runs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "yo"}\n{"instruction": "hi", "output": ""}\n')
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"")
    cases = [
        (spec_for(tiny_llama, bad), "error: bad.jsonl: row 2: field 'output' is missing or empty."),
        (spec_for(broken, bad), f"error: '{broken / 'config.json'}' is not valid JSON; the model folder is damaged."),
    ]
    for spec, message in cases:
        job = tmp_path / "job.yaml"
        job.write_text(spec.to_yaml())
        out = cli("train", str(job), timeout=120)
        assert (out.returncode, out.stderr.strip().splitlines()) == (2, [message])
    for path, message in [(tmp_path, "is a folder, not a job file"), (bad, "is not valid YAML")]:
        out = cli("train", str(path), timeout=120)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"model: caf\xe9\n")
    out = cli("train", str(latin), timeout=120)
    assert out.returncode == 2 and "is not UTF-8 text (byte 10)" in out.stderr
    assert not runs.exists() or not list(runs.iterdir())


def test_cli_unexpected_error_is_one_line_and_a_report(monkeypatch, capsys):
    from engine.__main__ import main

    def broken():
        raise RuntimeError("the machine room is on fire\nsecond line")

    monkeypatch.setattr(api, "doctor", broken)  # an unforeseen failure deep in a command
    assert main(["doctor"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    head, _, report = line.partition("; the full report is in ")
    assert head == "error: doctor stopped with RuntimeError: the machine room is on fire"
    text = Path(report).read_text()
    assert "Traceback" in text and "in broken" in text and "RuntimeError: the machine room is on fire" in text
    Path(report).unlink()


def test_killed_process_is_reported_failed(tiny_llama, identity_file, runs):
    import os
    import signal

    handle = api.start(spec_for(tiny_llama, identity_file, max_steps=100000))
    wait_for(handle, until=lambda st: st.step >= 1)
    os.kill(handle.pid, signal.SIGKILL)
    time.sleep(0.5)
    st = api.poll(handle)
    assert st.state == "failed" and "stopped unexpectedly (exit code -9)" in st.message
    assert "most often by the system when RAM runs out" in st.message  # what a SIGKILL nobody asked for usually is


def test_running_out_of_ram_on_the_cpu_is_a_sentence():
    """torch's CPU allocator raises a RuntimeError, not a MemoryError: the run said "Training stopped with an error
    ([enforce fail at alloc_cpu.cpp:..."."""
    import torch

    from engine.run import failure_message

    with pytest.raises(RuntimeError) as info:
        torch.empty(2**50, dtype=torch.uint8)  # a PiB: refused at once, nothing allocated
    assert failure_message(info.value, 3).startswith("Ran out of RAM.")


def test_out_of_memory_says_what_a_resume_can_change():
    """A resume continues the run as its job.yaml has it, from a checkpoint made for that model and batch: the
    messages said to pick a smaller model (or lower the batch size, or use QLoRA), "then resume", which trains the
    same model and batch again (or cannot load the adapter into another model). A resume is for when memory is
    free; smaller settings are a new run."""
    import torch

    from engine.run import failure_message

    with pytest.raises(RuntimeError) as info:
        torch.empty(2**50, dtype=torch.uint8)
    for exc in (info.value, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        message = failure_message(exc, 3)
        assert "then resume" not in message and "start again" in message, message


def as_in_a_terminal():
    """A child's Ctrl-C as a terminal gives it: SIGINT neither ignored nor blocked, whatever this test process inherited
    or had set by a library (both pass to a child through exec; the Ctrl-C tests failed only inside the full suite)."""
    import signal

    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_cli_malformed_job_yaml(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("model: m\ndata: d\nlearnig_rate: 3\n")
    out = cli("train", str(job))
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: ") and "unknown setting 'learnig_rate'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_train_chat_export(tiny_llama, identity_file, runs, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(spec_for(tiny_llama, identity_file, max_steps=5).to_yaml())
    out = cli("train", str(job))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "step 5/5" in out.stdout and "done: Training finished." in out.stdout
    run_dir = out.stdout.splitlines()[0].removeprefix("run: ")
    out = cli("chat", run_dir, "--prompt", "Who are you?", "--max-new-tokens", "5")
    assert out.returncode == 0, out.stderr
    out = cli("chat", Path(run_dir).name, "--prompt", "Who are you?", "--max-new-tokens", "5")  # by run id, as resume
    assert out.returncode == 0, out.stderr
    out = cli("export", run_dir, "--format", "lora", "--out", str(tmp_path / "ad"))
    assert out.returncode == 0, out.stderr
    assert "adapter_model.safetensors" in json.loads(out.stdout)["files"]
    out = cli("export", run_dir, "--format", "lora", "--out", str(tmp_path / "ad"))
    assert out.returncode == 2 and "already exists" in out.stderr


@pytest.mark.parametrize("presses, sig", [(1, "SIGINT"), (2, "SIGINT"), (1, "SIGTERM")])
def test_cli_ctrl_c_cancels_with_a_sentence_even_when_pressed_twice(
    tiny_llama, identity_file, runs, tmp_path, presses, sig
):
    """Ctrl-C asks the run for a checkpoint and says how it ended; a second one while it saves used to print the
    CLI's KeyboardInterrupt traceback. The run, in its own session, still saves and ends cancelled. SIGTERM (`timeout`,
    a scheduler) does the same: it ended the command and left the run training on its own."""
    import signal

    job = tmp_path / "job.yaml"
    job.write_text(spec_for(tiny_llama, identity_file, max_steps=100000).to_yaml())
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "train", str(job)],
            cwd=ROOT,
            stdout=o,
            stderr=e,
            preexec_fn=as_in_a_terminal,
        )
    deadline = time.time() + 300
    while "step 2/" not in out.read_text():
        assert time.time() < deadline and proc.poll() is None, out.read_text() + err.read_text()
        time.sleep(0.1)
    for _ in range(presses):
        proc.send_signal(getattr(signal, sig))
        time.sleep(0.2)
    assert proc.wait(timeout=120) == (130 if sig == "SIGINT" else 143), err.read_text()
    assert "Traceback" not in err.read_text(), err.read_text()
    run_dir = Path(out.read_text().splitlines()[0].removeprefix("run: "))
    st = wait_for(api.RunHandle(run_dir.name, run_dir, 0))
    assert st.state == "cancelled", log_of(st)
    if presses == 1:
        assert out.read_text().splitlines()[-1].startswith("cancelled: Cancelled; resume continues")


def test_cli_ctrl_c_during_an_export_is_one_line_and_leaves_nothing(tiny_llama, identity_file, runs, tmp_path):
    import signal

    st = wait_for(api.start(spec_for(tiny_llama, identity_file, max_steps=1)))
    out = tmp_path / "exports" / "m"
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        cmd = [sys.executable, "-m", "engine", "export", str(st.run_dir), "--format", "gguf-q8_0", "--out", str(out)]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, preexec_fn=as_in_a_terminal)
    deadline = time.time() + 300
    while "merged shard" not in log.read_text():  # under way: the merge is written, its checks and GGUF are next
        assert time.time() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    # 130 from the handler; on a loaded machine the process was seen, rarely, to end by the signal after printing the
    # handler's line (-2): what the user reads is the same
    assert proc.wait(timeout=120) in (130, -signal.SIGINT), log.read_text()
    assert "Traceback" not in log.read_text() and "export interrupted; nothing unfinished was kept." in log.read_text()
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_cli_chat_refuses_max_new_tokens_of_0():
    """It answered nothing ("0 tokens in 0.00 s")."""
    out = cli("chat", "m", "--prompt", "hi", "--max-new-tokens", "0")
    assert out.returncode == 2 and "argument --max-new-tokens: must be above 0, not 0" in out.stderr


def test_cli_doctor_reports_the_machine():
    out = cli("doctor")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["versions"]["torch"] and info["placement"]["device"] in ("cpu", "cuda")
    assert info["disk_free_gb"] > 0 and info["ram_total_gb"] > 0


def test_job_yaml_written_with_the_run_replays(tiny_llama, identity_file, runs):
    spec = spec_for(tiny_llama, identity_file, max_steps=2)
    st = wait_for(api.start(spec))
    assert api.JobSpec.from_yaml((st.run_dir / "job.yaml").read_text()) == spec
    assert yaml.safe_load((st.run_dir / "job.yaml").read_text())["max_steps"] == 2


def test_cli_offline_hub_model_is_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = cli("chat", "nobody/no-such-model", "--prompt", "hi", timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: Could not download 'nobody/no-such-model': the hub is unreachable and it is not in the local cache. "
        "Connect to the internet, or pick a local model folder."
    ]


def test_checkpoint_of_a_step_already_saved_is_kept(tiny_llama, tmp_path):
    """save_every saved step N and a cancel arrives before step N+1: the second save of step N keeps the first
    (it used to fail because finished folders are never overwritten)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.training.steps import save_checkpoint

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), LoraConfig(r=2, target_modules=["q_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    first = save_checkpoint(tmp_path, 4, model, opt, sched, (0, 4), 2, log=lambda m: None)
    stamp = (first / "state.json").stat().st_mtime_ns
    again = save_checkpoint(tmp_path, 4, model, opt, sched, (0, 4), 2, log=lambda m: None)
    assert again == first and (first / "state.json").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000004"]


def test_cli_job_paths_are_relative_to_the_job_file(tiny_llama, identity_file, runs, tmp_path):
    """README's smallest job names its data as it lies beside the job file; the command runs from elsewhere."""
    folder = tmp_path / "my-job"
    folder.mkdir()
    shutil.copy(identity_file, folder / "identity.jsonl")
    (folder / "job.yaml").write_text(f"model: {tiny_llama}\ndata: identity.jsonl\nmethod: lora\nmax_steps: 1\n")
    out = cli("train", str(folder / "job.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = Path(out.stdout.splitlines()[0].removeprefix("run: "))
    assert api.JobSpec.from_yaml((run_dir / "job.yaml").read_text()).data == str((folder / "identity.jsonl").resolve())


def test_resume_and_export_take_a_run_path_relative_to_where_the_command_runs(
    tiny_llama, identity_file, runs, monkeypatch
):
    """README's `python -m engine resume runs/<id>`: the training process starts in the project folder, so a relative
    run path used to name a folder there (a FileNotFoundError in the log, "stopped unexpectedly" to the user)."""
    first = wait_for(api.start(spec_for(tiny_llama, identity_file, max_steps=1, max_seq_length=4)))
    assert first.state == "failed" and "no example has an assistant reply" in first.message, log_of(first)
    monkeypatch.chdir(runs.parent)
    again = wait_for(api.resume(Path("runs") / first.run_id))
    assert again.state == "failed" and "no example has an assistant reply" in again.message, log_of(again)


def test_job_paths_relative_to_where_the_command_runs(tiny_llama, identity_file, runs, monkeypatch):
    """A model and data named relative to the working folder (not beside a job file) pass the checks before the run,
    so the training process, which starts in the project folder, must be handed them as absolute paths."""
    monkeypatch.chdir(identity_file.parent)
    st = wait_for(api.start(spec_for(os.path.relpath(tiny_llama), identity_file.name, max_steps=1)))
    assert st.state == "done", log_of(st)
    written = api.JobSpec.from_yaml((st.run_dir / "job.yaml").read_text())
    assert (written.model, written.data) == (str(tiny_llama), str(identity_file))


@pytest.mark.parametrize(
    "name, folder",
    [
        ("Нова", "Нова"),
        ("小助手", "小助手"),
        ("café au lait", "café-au-lait"),  # é composed (NFKC) whichever way it was typed
        ("cafe\u0301", "café"),
        ("ＡＢＣ run", "ABC-run"),  # full-width letters are the ASCII ones
        ("हिन्दी मॉडल", "हिन्दी-मॉडल"),  # vowel signs are marks: kept inside the word
        ("my run/../2: x?", "my-run-..-2-x"),
        ("🚀 ✨", "run"),
        ("", "run"),
        ("Нова " * 20, "Нова-Нова-Нова-Нова-Нова-Нова-Нова-Нова"),  # 40 characters, no trailing '-'
    ],
)
def test_run_folder_names_keep_letters_of_any_script(name, folder):
    from engine.api.processes import slug

    assert slug(name) == folder
    assert "/" not in slug(name) and "\\" not in slug(name) and len(slug(name).encode()) <= 160


def test_a_run_named_in_cyrillic_gets_a_readable_folder_and_ascii_export_names(
    tiny_llama, identity_file, runs, tmp_path
):
    from engine.export.gguf import gguf_file_name
    from engine.models.hub import check_target

    st = wait_for(api.start(spec_for(tiny_llama, identity_file, name="Нова", max_steps=1, device="cpu")))
    assert st.state == "done", st.message
    assert st.run_id.endswith("-Нова") and st.name == "Нова" and (runs / st.run_id / "adapter").is_dir()
    assert api.poll(st.run_id).run_id == st.run_id and [r.run_id for r in api.list_runs()] == [st.run_id]
    out = api.export(str(st.run_dir), "lora", tmp_path / "Нова-lora", log=lambda m: None)
    assert out.path.name == "Нова-lora" and (out.path / "adapter_model.safetensors").is_file()
    # names outside this machine stay ASCII: a GGUF file (and the Modelfile's FROM line), a hub repository
    assert gguf_file_name("Нова-gguf", "gguf-q8_0") == "gguf-q8_0.gguf"
    assert gguf_file_name("小助手", "gguf-q8_0") == "model-q8_0.gguf"
    with pytest.raises(api.UserError, match="not a hub repository name; use 'user/name' in ASCII"):
        check_target("me/Нова", token="x")


# A run process as the app sees one (its command line names the job.yaml): on SIGTERM it records "cancelled", as
# engine.run does, then takes a while to exit (a real one tears down torch), as long as it was told.
SLOW_EXIT = """
import json, os, signal, sys, time
folder = os.path.dirname(sys.argv[1])
def stop(*_):
    state = dict(state="cancelled", message="Cancelled.", step=5, total_steps=40, pid=os.getpid())
    with open(os.path.join(folder, "status.tmp"), "w") as f:
        json.dump(state, f)
    os.replace(os.path.join(folder, "status.tmp"), os.path.join(folder, "status.json"))
    time.sleep(float(sys.argv[2]))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(600)
"""


def test_a_resume_pressed_while_the_cancelled_process_exits_is_not_marked_cancelled(tiny_llama, identity_file, runs):
    """Cancel, then Resume the moment the view says "cancelled": the old process was still exiting, so the cancel
    still waited for it, then found the resumed attempt's "starting" status and wrote "Cancelled before it could save
    a checkpoint" over it. The resumed run trained on, shown as cancelled (the Train view stopped following it, and
    Resume or Start could be pressed again beside it)."""
    import threading

    from helpers import tiny_spec

    folder = runs / "20260101-000000-t"
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text(tiny_spec(tiny_llama, identity_file, max_steps=40).to_yaml())
    old = subprocess.Popen([sys.executable, "-c", SLOW_EXIT, str(folder / "job.yaml"), "3"], stdout=subprocess.PIPE)
    assert old.stdout.readline().strip() == b"ready"
    (folder / "status.json").write_text(json.dumps(dict(state="running", step=5, total_steps=40, pid=old.pid)))

    cancelling = threading.Thread(target=api.cancel, args=(folder,))
    cancelling.start()
    wait_for(folder, timeout=30, until=lambda st: st.state == "cancelled")
    assert old.poll() is None  # still exiting
    resumed = api.resume(folder)
    cancelling.join(timeout=60)
    old.wait()
    status = json.loads((folder / "status.json").read_text())
    assert status.get("pid") == resumed.pid and status["state"] != "cancelled", status
    assert api.cancel(resumed).state == "cancelled"


def test_resume_pressed_twice_at_once_starts_one_process(tiny_llama, identity_file, runs, monkeypatch):
    """Two resumes of the same cancelled run at the same moment (two tabs of the app, the app and the command line)
    each found it cancelled and each started a process: both trained in the one folder until one failed on the
    other's checkpoint ("'step-000018' already exists"), and the run read as failed while the other trained on."""
    import threading

    from engine.api import runs as api_runs

    folder = runs / "20260101-000000-t"
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text(tiny_spec(tiny_llama, identity_file, max_steps=100000).to_yaml())
    (folder / "status.json").write_text(json.dumps(dict(state="cancelled", message="x", step=0, total_steps=0)))
    checked = api_runs._check_job

    def slow_check(*args, **kw):  # the moment between reading the state and starting the process, made longer
        time.sleep(0.5)
        return checked(*args, **kw)

    monkeypatch.setattr(api_runs, "_check_job", slow_check)
    started, refused = [], []

    def press():
        try:
            started.append(api.resume(folder))
        except api.UserError as e:
            refused.append(str(e))

    presses = [threading.Thread(target=press) for _ in range(2)]
    for t in presses:
        t.start()
    for t in presses:
        t.join()
    try:
        assert len(started) == 1 and refused and "still starting" in refused[0], (started, refused)
    finally:
        api.cancel(folder, wait_s=10)
        for handle in started:  # a second process, which the folder's status does not name
            if api.processes.alive(handle.pid):
                os.kill(handle.pid, 9)


def test_a_resume_without_a_checkpoint_starts_the_curve_over(tiny_llama, identity_file, tmp_path):
    """A run that failed before its first checkpoint (no save_every, the 10-minute timer not yet due) resumes from
    step 0; its old steps stayed in metrics.jsonl, so the resumed run's curve and last loss were the old attempt's
    past the step it had reached (cancelled at step 1, it showed the loss of step 3)."""

    from engine.core.errors import Cancelled
    from engine.core.runlog import RunLog, read_metrics
    from engine.training.dispatch import train

    spec = tiny_spec(tiny_llama, identity_file, max_steps=6, save_every=0, save_every_minutes=0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def driver_error():
        raise RuntimeError("a driver error")

    with failing_forward(4, driver_error), pytest.raises(RuntimeError, match="a driver error"):
        train(spec, run_dir, RunLog(run_dir), False, lambda: False, lambda m: None)
    assert not (run_dir / "checkpoints").exists() and [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3]
    polls = iter(range(100))
    with pytest.raises(Cancelled):  # stopped after the resumed run's first step
        train(spec, run_dir, RunLog(run_dir), True, lambda: next(polls) >= 2, lambda m: None)
    assert [m["step"] for m in read_metrics(run_dir)] == [1]


def test_a_run_whose_process_id_now_names_another_program_reads_as_stopped(tiny_llama, identity_file, runs):
    """After a power cut or a restart (a container's process ids start over) status.json still says "running" with
    the pid of a process long gone; when another program now has that pid, the run read as training for good: Resume
    said to cancel it first, and Start refused while it "trained"."""
    folder = runs / "20260101-000000-t"
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text(tiny_spec(tiny_llama, identity_file).to_yaml())
    other = subprocess.Popen(["sleep", "60"])  # not a run: its command line names no run folder
    try:
        state = dict(state="running", message="training", step=5, total_steps=40, pid=other.pid)
        (folder / "status.json").write_text(json.dumps(state))
        st = api.poll(folder)
        assert st.state == "failed" and "stopped unexpectedly" in st.message, st.message
    finally:
        other.kill()
        other.wait()


# A run process whose step and checkpoint take a while: on SIGTERM it works on for as long as it was told, then
# records "cancelled" (its checkpoint saved) and exits, as engine.run does.
SLOW_STEP = """
import json, os, signal, sys, time
folder = os.path.dirname(sys.argv[1])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("ready", flush=True)
while not stop:
    time.sleep(0.05)
time.sleep(float(sys.argv[2]))
state = dict(state="cancelled", message="Cancelled; saved.", step=2, total_steps=40, pid=os.getpid())
with open(os.path.join(folder, "status.tmp"), "w") as f:
    json.dump(state, f)
os.replace(os.path.join(folder, "status.tmp"), os.path.join(folder, "status.json"))
"""


def test_cancel_waits_for_a_step_and_its_checkpoint_as_long_as_the_run_takes_for_them(tiny_llama, identity_file, runs):
    """Cancel asks the run to finish its step and save a checkpoint, then killed it after a fixed minute: a run whose
    steps take longer (GRPO sampling, a large model on a T4) was always killed before its checkpoint, and the
    progress since the last one was lost ("Cancelled before it could save a checkpoint"). The wait now covers twice
    the longest time the run took from one step to the next."""
    folder = runs / "20260101-000000-t"
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text(tiny_spec(tiny_llama, identity_file, max_steps=40).to_yaml())
    now = time.time()
    records = [dict(step=1, loss=1.0, time=now - 2.0), dict(step=2, loss=1.0, time=now)]  # a step of 2 s
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = subprocess.Popen([sys.executable, "-c", SLOW_STEP, str(folder / "job.yaml"), "2.5"], stdout=subprocess.PIPE)
    try:
        assert run.stdout.readline().strip() == b"ready"
        (folder / "status.json").write_text(json.dumps(dict(state="running", step=2, total_steps=40, pid=run.pid)))
        st = api.cancel(folder, wait_s=1)
        assert (st.state, st.message) == ("cancelled", "Cancelled; saved."), st.message
    finally:
        run.kill()
        run.wait()
    # the time between an earlier attempt and the resumed one is no step: a run that never stops is still killed
    resumed = [dict(step=1, loss=1.0, time=now - 60), dict(event="resume", step=1, time=now - 2.0)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in resumed + records[1:]))
    stuck = subprocess.Popen([sys.executable, "-c", SLOW_STEP, str(folder / "job.yaml"), "600"], stdout=subprocess.PIPE)
    try:
        assert stuck.stdout.readline().strip() == b"ready"
        (folder / "status.json").write_text(json.dumps(dict(state="running", step=2, total_steps=40, pid=stuck.pid)))
        t0 = time.monotonic()
        st = api.cancel(folder, wait_s=1)
        assert st.message.startswith("Cancelled before it could save") and time.monotonic() - t0 < 30
    finally:
        stuck.kill()
        stuck.wait()


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_a_cancel_before_the_first_step_saves_no_checkpoint(objective, tiny_llama, identity_file, tmp_path):
    """Cancel pressed while the model loads: the run wrote a checkpoint of the untouched weights (step-000000: the
    whole model for full fine-tuning, a write the cancel's wait could cut short) before it stopped."""
    from engine.core.errors import Cancelled
    from engine.core.runlog import RunLog
    from engine.training.dispatch import train

    data = identity_file
    if objective == "dpo":
        data = tmp_path / "pairs.jsonl"
        data.write_text(json.dumps(dict(prompt="Who are you?", chosen="Nova.", rejected="A fox.")) + "\n")
    spec = tiny_spec(tiny_llama, data, objective=objective, max_steps=4)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    runlog = RunLog(run_dir)
    with pytest.raises(Cancelled):  # asked while loading, seen when training would begin
        train(spec, run_dir, runlog, False, lambda: runlog.state["state"] == "running", lambda m: None)
    assert not (run_dir / "checkpoints").exists()


def test_a_run_process_taking_its_command_line_reads_as_running(tiny_llama, identity_file, runs, monkeypatch):
    """Right after a run is started its process's command line reads empty for a moment, while exec gives it its
    new one: the check that the pid is the run's own read that as another program, and a resume just pressed
    read as "stopped unexpectedly" (seen under load in test_full_disk)."""
    from pathlib import Path as P

    folder = runs / "20260101-000000-t"
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text(tiny_spec(tiny_llama, identity_file).to_yaml())
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(folder / "job.yaml")])
    try:
        (folder / "status.json").write_text(json.dumps(dict(state="starting", step=0, total_steps=0, pid=run.pid)))
        read_bytes = P.read_bytes
        exec_moment = P(f"/proc/{run.pid}/cmdline")
        monkeypatch.setattr(P, "read_bytes", lambda self: b"" if self == exec_moment else read_bytes(self))
        assert api.poll(folder).state == "starting"
    finally:
        run.kill()
        run.wait()


def test_a_phi3_run_puts_adapters_on_its_fused_projections(identity_file, runs, tmp_path):
    """Phi-3 and Phi-4 fuse q/k/v into qkv_proj and gate/up into gate_up_proj. The default targets name the Llama
    family's seven projections, so such a run trained adapters on o_proj and down_proj alone, two of seven, said in
    one log line. A fused projection is a target where every name it fuses is one."""
    import torch
    from tiny import make_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = make_tokenizer()
    cfg = AutoConfig.for_model(
        "phi3", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = tmp_path / "tiny-phi3"
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(model)
    tok.save_pretrained(model)
    st = wait_for(api.start(spec_for(model, identity_file, max_steps=2, device="cpu")))
    assert st.state == "done", log_of(st)
    adapted = json.loads((st.run_dir / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert sorted(adapted) == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    assert "this model has no" not in (st.run_dir / "log.txt").read_text()


def test_a_resume_trains_with_the_learning_rate_and_steps_its_job_yaml_now_has(tiny_llama, identity_file, tmp_path):
    """job.yaml edited between a cancel and a resume (a lower learning rate, more steps): the resumed run kept the
    checkpoint's learning rate (the optimizer's and the schedule's saved state) and its first step took the old
    schedule's. The new rate applies from the resumed step on, on the schedule of the new step count."""
    from engine.core.errors import Cancelled
    from engine.core.runlog import RunLog, read_metrics
    from engine.training.dispatch import train
    from engine.training.steps import lr_factor

    spec = tiny_spec(tiny_llama, identity_file, max_steps=4, learning_rate=5e-3, warmup_steps=0, save_every=0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    polls = iter(range(100))
    with pytest.raises(Cancelled):  # stopped after a step or two, with a checkpoint
        train(spec, run_dir, RunLog(run_dir), False, lambda: next(polls) >= 3, lambda m: None)
    (ckpt,) = (run_dir / "checkpoints").iterdir()
    cut = int(ckpt.name.removeprefix("step-"))
    assert 1 <= cut < 4
    edited = spec.replace(learning_rate=1e-3, max_steps=6)
    lines = []
    train(edited, run_dir, RunLog(run_dir), True, lambda: False, lines.append)
    lrs = [m["lr"] for m in read_metrics(run_dir)]
    old = [5e-3 * lr_factor(s, 4, 0, "linear") for s in range(cut)]
    new = [1e-3 * lr_factor(s, 6, 0, "linear") for s in range(cut, 6)]
    assert lrs == pytest.approx(old + new)
    assert any("learning rate" in line and "0.001" in line for line in lines), lines  # the change is said


def test_a_resume_past_a_lowered_max_steps_is_refused_and_changes_nothing(tiny_llama, identity_file, runs):
    """max_steps lowered in job.yaml below the step the run's checkpoint has reached: the resume trained nothing and
    ended "done 6/2". It is refused with a sentence, before anything in the run folder changes; the training process
    refuses it too (where its step count comes from epochs, which only it can count)."""
    from engine.core.errors import UserError
    from engine.core.runlog import RunLog
    from engine.spec.jobspec import read_job
    from engine.training.dispatch import train

    st = wait_for(api.start(tiny_spec(tiny_llama, identity_file, max_steps=6, save_every=2, keep_checkpoints=5)))
    assert st.state == "done", log_of(st)
    shutil.rmtree(st.run_dir / "checkpoints" / "step-000006")  # as if it died after step 4's checkpoint
    shutil.rmtree(st.run_dir / "adapter")
    (st.run_dir / "status.json").write_text(json.dumps(dict(state="failed", message="x", step=4, total_steps=6)))
    job = st.run_dir / "job.yaml"
    job.write_text(job.read_text().replace("max_steps: 6", "max_steps: 2"))
    assert read_job(job).max_steps == 2

    def snapshot():
        return {p: p.read_bytes() for p in sorted(st.run_dir.rglob("*")) if p.is_file()}

    before = snapshot()
    with pytest.raises(UserError, match=r"already trained 4 steps.*max_steps to 4 or more"):
        api.resume(st.run_dir)
    assert snapshot() == before
    with pytest.raises(UserError, match=r"already trained 4 steps"):
        train(read_job(job), st.run_dir, RunLog(st.run_dir), True, lambda: False, lambda m: None)
    assert sorted(p.name for p in (st.run_dir / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert not (st.run_dir / "adapter").exists()


def test_cli_ctrl_c_as_the_run_is_launched_cancels_it(
    tiny_llama, identity_file, runs, tmp_path, monkeypatch, capsys, request
):
    """A Ctrl-C after api.start has launched the run (in its own session, out of the terminal's reach) but before the
    command follows it ended the command with "train interrupted; nothing unfinished was kept." while the run trained
    on. Here the Ctrl-C comes at that moment: the real api.start runs, then this process gets a SIGINT; the run is
    now cancelled as a Ctrl-C while following cancels it."""
    import signal

    from engine.__main__ import main

    job = tmp_path / "job.yaml"
    job.write_text(spec_for(tiny_llama, identity_file, max_steps=100000).to_yaml())
    start = api.start

    def start_then_ctrl_c(*args, **kwargs):
        handle = start(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return handle

    monkeypatch.setattr(api, "start", start_then_ctrl_c)
    # a terminal's Ctrl-C: a pytest started in the background (`cmd &`) inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    assert main(["train", str(job)]) == 130
    out = capsys.readouterr()
    assert "nothing unfinished was kept" not in out.err, out.err
    (run_dir,) = runs.iterdir()
    st = api.poll(run_dir)
    assert st.state == "cancelled", (out.out, out.err, log_of(st))
    assert out.out.splitlines()[-1].startswith("cancelled: "), out.out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the command's handlers are given back


def test_a_resume_refuses_job_yaml_edits_its_checkpoints_cannot_go_on_with(tiny_llama, identity_file, runs, tmp_path):
    """job.yaml edited between a checkpoint and a resume in settings the checkpoint cannot go on with (the batch
    layout, the adapter's rank, the data file's rows): the resume went on without a word, its data position computed
    from the step in the new layout (or failed to load the adapter). It is refused with a sentence naming them, before
    anything in the run folder changes, and by the training process too; an edit it honours still resumes."""
    from engine.core.errors import UserError
    from engine.run import main
    from engine.training.edits import changed_settings

    data = tmp_path / "data.jsonl"
    shutil.copyfile(identity_file, data)
    st = wait_for(
        api.start(tiny_spec(tiny_llama, data, max_steps=6, save_every=2, keep_checkpoints=5, learning_rate=5e-3))
    )
    assert st.state == "done", log_of(st)
    shutil.rmtree(st.run_dir / "checkpoints" / "step-000006")  # as if it died after step 4's checkpoint
    shutil.rmtree(st.run_dir / "adapter")
    (st.run_dir / "status.json").write_text(json.dumps(dict(state="failed", message="x", step=4, total_steps=6)))
    job = st.run_dir / "job.yaml"
    original = job.read_text()
    job.write_text(original.replace("batch_size: 2", "batch_size: 3").replace("lora_r: 4", "lora_r: 8"))

    def snapshot():
        return {p: p.read_bytes() for p in sorted(st.run_dir.rglob("*")) if p.is_file()}

    before = snapshot()
    with pytest.raises(UserError, match=r"edited .*\(batch_size, lora_r\).*put those settings back.*new run"):
        api.resume(st.run_dir)
    assert snapshot() == before
    assert main([str(job), "--resume"]) == 2  # the training process refuses it before loading anything
    assert "(batch_size, lora_r)" in json.loads((st.run_dir / "status.json").read_text())["message"]
    assert sorted(p.name for p in (st.run_dir / "checkpoints").glob("step-*")) == ["step-000002", "step-000004"]

    job.write_text(original)
    rows = data.read_text().splitlines()
    data.write_text("\n".join(rows[1:] + rows[:1]) + "\n")  # the same rows in another order
    with pytest.raises(UserError, match=r"\(data \(its content\)\)"):
        api.resume(st.run_dir)
    shutil.copyfile(identity_file, data)

    job.write_text(original.replace("learning_rate: 0.005", "learning_rate: 0.001"))
    assert "learning_rate: 0.001" in job.read_text()
    resumed = wait_for(api.resume(st.run_dir))
    assert resumed.state == "done", log_of(resumed)
    assert "resume: from step-000004" in log_of(resumed)

    # checkpoints from before the job was recorded resume unchecked, as they did
    (st.run_dir / "trained_job.json").unlink()
    assert changed_settings(st.run_dir, api.JobSpec.from_yaml(original.replace("batch_size: 2", "batch_size: 3"))) == []


def test_which_job_yaml_edits_a_resume_takes(tiny_llama, identity_file, tmp_path, monkeypatch):
    """The settings a resume honours pass; the data file moved (same bytes) passes; a data file this process cannot
    find (a relative path, from another folder) is left to the training process; the rest are named."""
    from engine.training.edits import changed_settings, check_and_record

    data = tmp_path / "data.jsonl"
    shutil.copyfile(identity_file, data)
    spec = tiny_spec(tiny_llama, data, max_steps=6)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step-000002").mkdir(parents=True)
    check_and_record(run_dir, spec, resume=False)
    honoured = spec.replace(learning_rate=1e-3, max_steps=9, save_every=1, eval_steps=3, lora_dropout=0.1, name="x")
    assert changed_settings(run_dir, honoured) == []
    moved = tmp_path / "moved.jsonl"
    shutil.copyfile(data, moved)
    assert changed_settings(run_dir, spec.replace(data=str(moved))) == []
    moved.write_text(moved.read_text() + moved.read_text())
    assert changed_settings(run_dir, spec.replace(data=str(moved))) == ["data"]
    monkeypatch.chdir(tmp_path)
    check_and_record(run_dir, spec.replace(data="data.jsonl"), resume=False)
    monkeypatch.chdir(run_dir)
    assert changed_settings(run_dir, spec.replace(data="data.jsonl")) == []
    edited = spec.replace(
        grad_accum=2, seed=1, max_seq_length=32, packing=True, method="full", target_modules=("q_proj",)
    )
    assert changed_settings(run_dir, edited.replace(data="data.jsonl")) == [
        "grad_accum x gpus", "max_seq_length", "method", "packing", "seed", "target_modules"
    ]  # fmt: skip
    # another GPU count with the same examples a step is no edit (README, "Several GPUs"): 1 x 2 GPUs as 2 x 1
    check_and_record(run_dir, spec.replace(data="data.jsonl", grad_accum=2, gpus=1), resume=False)
    assert changed_settings(run_dir, spec.replace(data="data.jsonl", grad_accum=1, gpus=2)) == []
    assert changed_settings(run_dir, spec.replace(data="data.jsonl", grad_accum=2, gpus=2)) == ["grad_accum x gpus"]
    # a setting the record lacks (new in a later version of the app) or job.yaml lacks (one since removed) is no edit
    record = json.loads((run_dir / "trained_job.json").read_text())
    del record["packing"]
    record["a_setting_since_removed"] = 1
    (run_dir / "trained_job.json").write_text(json.dumps(record))
    assert changed_settings(run_dir, spec.replace(data="data.jsonl", grad_accum=2, gpus=1, packing=True)) == []
