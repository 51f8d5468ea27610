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
    with pytest.raises(UserError, match="unknown setting 'learning_rat'"):
        JobSpec.from_yaml(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: m\ndata: d\nmax_steps: many\n", "'max_steps' should be a whole number"),
        ("model: m\ndata: d\nmethod: magic\n", "'method' is 'magic'"),
        ("model: m\n", "'data' is required"),
        ("model: [m\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("model: m\ndata: d\nbatch_size: 0\n", "'batch_size' must be at least 1"),
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
        ("objective: grpo\nnum_generations: 1\nrewards: [{preset: format}]\n", "'num_generations' must be at least 2"),
        ("objective: dpo\ndpo_beta: 0\n", "'dpo_beta' must be above 0"),
        ("optimizer: paged_adamw\n", "use one of: auto, adamw, adamw_8bit, paged_adamw_8bit"),
    ],
)
def test_bad_objective_settings_give_one_sentence(text, message):
    with pytest.raises(UserError, match=message) as info:
        JobSpec.from_yaml("model: m\ndata: d\n" + text)
    assert "\n" not in str(info.value)
