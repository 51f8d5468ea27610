import dataclasses

import pytest

from engine.api import JobSpec, UserError


def test_yaml_round_trip_keeps_every_field():
    spec = JobSpec(
        model="Qwen/Qwen3-0.6B",
        data="d.jsonl",
        name="x",
        method="qlora",
        max_steps=7,
        learning_rate=1e-4,
        target_modules=("q_proj", "v_proj"),
        notes={"preset": "t4"},
    )
    assert JobSpec.from_yaml(spec.to_yaml()) == spec


def test_unknown_key_is_rejected_by_name():
    text = JobSpec(model="m", data="d").to_yaml() + "learning_rat: 0.1\n"
    with pytest.raises(UserError, match="unknown setting 'learning_rat'; did you mean 'learning_rate'\\?$"):
        JobSpec.from_yaml(text)
    with pytest.raises(UserError, match="unknown setting 'wandb_project'; known settings are: model, data, "):
        JobSpec.from_yaml("model: m\ndata: d\nwandb_project: x\n")


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: m\ndata: d\nmax_steps: many\n", "'max_steps' should be a whole number"),
        ("model: m\ndata: d\nmethod: magic\n", "'method' is 'magic'"),
        ("model: m\n", "'data' is required"),
        ("model: [m\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        (
            "model: m\ndata: d\nbatch_size: 0\n",
            "'batch_size' \\(examples per micro-step\\) must be a whole number from 1 to 65,536; got 0",
        ),
        ("model: m\ndata: d\ngradient_checkpointing: 'yes'\n", "true or false"),
    ],
)
def test_bad_job_files_give_one_sentence(text, message):
    with pytest.raises(UserError, match=message) as info:
        JobSpec.from_yaml(text)
    assert "\n" not in str(info.value)


def test_ints_are_accepted_for_floats():
    spec = JobSpec.from_yaml("model: m\ndata: d\nlearning_rate: 1\n")
    assert spec.learning_rate == 1.0 and isinstance(spec.learning_rate, float)


def test_a_job_without_a_learning_rate_gets_its_methods_usual_one():
    """`method: full` with no learning_rate trained at LoRA's 2e-4, ten times the usual rate for full fine-tuning
    (the presets' 2e-5); a learning rate written in the job is kept."""
    assert JobSpec.from_yaml("model: m\ndata: d\nmethod: full\n").learning_rate == 2e-5
    assert JobSpec.from_yaml("model: m\ndata: d\nmethod: qlora\n").learning_rate == 2e-4
    assert JobSpec.from_yaml("model: m\ndata: d\n").learning_rate == 2e-4
    assert JobSpec.from_yaml("model: m\ndata: d\nmethod: full\nlearning_rate: 1e-4\n").learning_rate == 1e-4


def test_numbers_in_exponent_form_without_a_dot_are_numbers():
    """PyYAML (YAML 1.1) reads `2e-4` as the text '2e-4'; the user wrote a number, as Axolotl's and TRL's configs do.
    A name that looks like one still round-trips as text."""
    spec = JobSpec.from_yaml("model: m\ndata: d\nlearning_rate: 2e-4\nembedding_learning_rate: 1E-5\nname: '1e3'\n")
    assert (spec.learning_rate, spec.embedding_learning_rate, spec.name) == (2e-4, 1e-5, "1e3")
    assert JobSpec.from_yaml(spec.to_yaml()) == spec
    assert JobSpec.from_yaml("model: m\ndata: d\nmax_steps: 1e3\n").max_steps == 1000
    with pytest.raises(UserError, match="'max_steps' should be a whole number, not 2.5"):
        JobSpec.from_yaml("model: m\ndata: d\nmax_steps: 2.5\n")


def test_a_job_file_from_before_the_objectives_loads_as_sft():
    spec = JobSpec.from_yaml("model: m\ndata: d\nmethod: full\n")
    assert (spec.objective, spec.rewards, spec.optimizer, spec.train_embeddings) == ("sft", (), "auto", False)


def test_objectives_and_their_settings_round_trip():
    spec = JobSpec(
        model="m",
        data="d",
        objective="grpo",
        num_generations=8,
        max_new_tokens=64,
        rewards=({"preset": "answer", "mode": "numeric", "weight": 2}, {"preset": "format"}),
        optimizer="paged_adamw_8bit",
    )
    again = JobSpec.from_yaml(spec.to_yaml())
    assert again == spec and isinstance(again.rewards, tuple)


@pytest.mark.parametrize(
    "text, message",
    [
        ("objective: rlhf\n", "'objective' is 'rlhf'; use one of: sft, pretrain, dpo, orpo, grpo"),
        ("objective: grpo\n", "GRPO needs at least one reward"),
        ("objective: grpo\nrewards: regex\n", "'rewards' should be a list of mappings"),
        ("objective: grpo\nrewards: [{preset: regex}]\n", "give the 'pattern' a reply should match"),
        (
            "objective: grpo\nnum_generations: 1\nrewards: [{preset: format}]\n",
            "'num_generations' \\(replies sampled per prompt\\) must be a whole number from 2",
        ),
        (
            "objective: dpo\ndpo_beta: 0\n",
            "'dpo_beta' \\(the pull towards the base model\\) must be a positive number; got 0.0",
        ),
        ("optimizer: paged_adamw\n", "use one of: auto, adamw, adamw_8bit, paged_adamw_8bit"),
    ],
)
def test_bad_objective_settings_give_one_sentence(text, message):
    with pytest.raises(UserError, match=message) as info:
        JobSpec.from_yaml("model: m\ndata: d\n" + text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "line, message",
    [
        ("max_grad_norm: -1", "'max_grad_norm' (the gradient-clipping threshold; 0 turns clipping off) must be 0 or a"),
        ("warmup_steps: -1", "'warmup_steps' (steps over which the learning rate rises to its peak) must be a whole"),
        ("save_every: -2", "'save_every' (optimizer steps between checkpoints; 0 saves only at the end) must be"),
        ("lora_alpha: 0", "'lora_alpha' (the adapter scale's numerator) must be a whole number from 1"),
        ("learning_rate: .nan", "'learning_rate' (the peak step size) must be a positive number; got nan."),
        ("learning_rate: -0.001", "'learning_rate' (the peak step size) must be a positive number; got -0.001."),
        ("weight_decay: -0.1", "'weight_decay' (how strongly weights are pulled towards 0) must be 0 or a positive"),
        (
            "lora_dropout: 1.5",
            "'lora_dropout' (the share of adapter inputs dropped in training) must be at least 0 and",
        ),
        ("lora_dropout: 1", "below 1; got 1.0."),
        (
            "epochs: .inf",
            "'epochs' (passes over the data, when max_steps is 0) must be 0 or a positive number; got inf",
        ),
        ("seed: 1180591620717411303424", "'seed' (the random seed) must be a whole number from 0 to 4,294,967,295"),
        ("seed: -1", "'seed' (the random seed) must be a whole number from 0 to 4,294,967,295; got -1."),
        ("max_seq_length: 99999999999", "'max_seq_length' (the longest example, in tokens) must be a whole number"),
        ("temperature: .inf", "'temperature' (the sampling temperature) must be a positive number; got inf."),
        ("grpo_beta: -1", "'grpo_beta' (the KL penalty towards the base model) must be 0 or a positive number"),
        ("embedding_learning_rate: 0", "'embedding_learning_rate' (the embeddings' own step size) must be a positive"),
        ("max_steps: -5", "'max_steps' (optimizer steps; 0 trains for 'epochs') must be a whole number from 0"),
        ("keep_checkpoints: 0", "'keep_checkpoints' (checkpoints kept) must be a whole number from 1"),
        ('system_prompt: "be \\ud800 kind"', "'system_prompt' holds an invalid character ('\\ud800' at position 3)"),
    ],
)
def test_every_number_is_checked_with_its_meaning(line, message):
    with pytest.raises(UserError) as info:
        JobSpec.from_yaml(f"model: m\ndata: d\n{line}\n")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_every_numeric_setting_has_a_range():
    from engine.spec.jobspec import LIMITS

    numeric = {f.name for f in dataclasses.fields(JobSpec) if f.type in (int, float, "int", "float")}
    assert numeric == set(LIMITS)


def test_max_grad_norm_zero_turns_clipping_off_and_is_accepted():
    assert JobSpec.from_yaml("model: m\ndata: d\nmax_grad_norm: 0\n").max_grad_norm == 0.0


def test_duplicate_key_names_the_key_and_line():
    with pytest.raises(UserError, match=r"job.yaml: the setting 'learning_rate' is given twice \(again at line 4\)"):
        JobSpec.from_yaml("model: m\ndata: d\nlearning_rate: 0.1\nlearning_rate: 0.2\n")


def test_job_file_that_is_not_utf8_or_a_folder_gets_a_sentence(tmp_path):
    from engine.spec.jobspec import read_job

    latin = tmp_path / "job.yaml"
    latin.write_bytes("model: m\ndata: d\nname: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"is not UTF-8 text \(byte 26\); save it as UTF-8"):
        read_job(latin)
    with pytest.raises(UserError, match="is a folder, not a job file"):
        read_job(tmp_path)
    with pytest.raises(UserError, match="expected a mapping of settings"):
        (tmp_path / "list.yaml").write_text("- 1\n")
        read_job(tmp_path / "list.yaml")
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbfmodel: m\ndata: d\n")
    assert read_job(bom).model == "m"


def test_job_paths_resolve_beside_the_job_file_only_where_something_is_there(tmp_path):
    from engine.spec.jobspec import with_paths_beside

    (tmp_path / "rows.jsonl").write_text("{}\n")
    spec = JobSpec(model="Qwen/Qwen3-0.6B", data="rows.jsonl")
    resolved = with_paths_beside(spec, tmp_path)
    assert (resolved.model, resolved.data) == ("Qwen/Qwen3-0.6B", str(tmp_path / "rows.jsonl"))
    elsewhere = JobSpec(model="/abs/model", data="missing.jsonl")
    assert with_paths_beside(elsewhere, tmp_path) == elsewhere
