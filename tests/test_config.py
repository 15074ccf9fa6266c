"""Config parsing: YAML sections, key=value overrides, and errors that name the key."""

from pathlib import Path

import pytest

from east_ds.config import ConfigError, RunConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    t = cfg.training
    assert t.micro_batch_size * t.gradient_accumulation_steps * t.num_ranks == t.global_batch_size


def test_paper_settings():
    sft = load_config(CONFIGS[0].parent / "gsm8k_sft_east.yaml")
    dpo = load_config(CONFIGS[0].parent / "math_dpo_vanilla.yaml")
    assert (sft.training.lr, sft.training.epochs, sft.training.global_batch_size) == (2e-6, 3, 16)
    assert sft.weighting.a == 1.0 and dpo.weighting.a == 0.0
    assert dpo.training.lr == 2e-7 and dpo.training.beta == 0.01 and dpo.training.max_prompt_len == 512


def test_overrides_and_types(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\ntraining:\n  lr: 1.0e-5\n")
    cfg = load_config(f, ["weighting.a=-1.5", "training.epochs=2", "rollout.n=4", "data.train_limit=null"])
    assert cfg.training.lr == 1e-5 and cfg.weighting.a == -1.5 and cfg.training.epochs == 2
    assert cfg.rollout.n == 4 and cfg.data.train_limit is None
    # an int is accepted where a float is expected, and stored as a float
    assert load_config(f, ["weighting.a=2"]).weighting.a == 2.0
    # YAML 1.1 reads 1e-6 as a string; a float field takes it as the number
    assert load_config(f, ["training.lr=1e-6"]).training.lr == 1e-6


@pytest.mark.parametrize("override, message", [
    (["training.lrr=1"], "training.lrr"),
    (["colour=red"], "colour"),
    (["training.epochs=three"], "training.epochs"),
    (["training.loss=ppo"], "training.loss"),
    (["rollout.n=1.5"], "rollout.n"),
    (["training.gradient_checkpointing=1"], "training.gradient_checkpointing"),
    (["training=3"], "training"),
    (["nonsense"], "key=value"),
])
def test_errors_name_the_key(tmp_path, override, message):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\n")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(f, override)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_run_requires_model_and_data(tmp_path):
    from east_ds.driver import run

    with pytest.raises(ConfigError, match="model.path is required"):
        run(load_config(None, [f"output_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match="data.train is required"):
        run(load_config(None, [f"output_dir={tmp_path}", "model.path=/some/model"]))


def test_placement_on_cpu_and_gpu():
    from east_ds.config import RolloutConfig
    from east_ds.cluster.placement import Placement

    def placement(mode, gpus, *overrides):
        return Placement.of(load_config(None, [f"placement.mode={mode}", "rollout.num_engines=2",
                                            "training.num_ranks=2", *overrides]), gpus=gpus)

    cpu = placement("colocated", 0)  # on CPU both modes alternate: nothing sleeps, no GPUs requested
    assert not cpu.colocated and cpu.engine_options()["gpu_share"] == 1.0 and cpu.engine_options()["need"] is None
    assert cpu.trainer_options()["num_gpus_per_rank"] == 0 and cpu.trainer_options()["need"].strategy == ""
    assert cpu.rollout_config(RolloutConfig()).enable_sleep is False
    split = placement("split", 8)
    assert split.trainer_options()["num_gpus_per_rank"] == 1 and split.engine_options()["gpu_share"] == 1.0
    assert split.trainer_options()["need"].bundles == [{"GPU": 1.0, "CPU": 1.0}] * 2  # a placement group of its own
    shared = placement("colocated", 8)
    assert shared.engine_options()["gpu_share"] == 0.5 and shared.rollout_config(RolloutConfig()).enable_sleep
    assert shared.engine_options()["need"].bundles == [{"GPU": 1.0, "CPU": 2.0}] * 2  # room for engine + rank
    with pytest.raises(ConfigError, match="weight_sync=broadcast needs placement.mode=split"):
        placement("colocated", 8, "rollout.weight_sync=broadcast")
    placement("colocated", 0, "rollout.weight_sync=broadcast")  # on CPU nothing shares a GPU


def test_placement_fails_at_once_when_the_cluster_is_too_small(capsys):
    from east_ds.cluster.placement import SchedulingTimeout
    from east_ds.cluster.placement import Placement

    p = Placement.of(load_config(None, ["placement.mode=split", "rollout.num_engines=4"]), gpus=1)
    with pytest.raises(SchedulingTimeout, match=r"can never hold this run: rollout engines \+ trainer ranks need "
                                                r"5 GPUs .*the cluster has 1 in all"):
        p.check_resources({"GPU": 1.0, "CPU": 8.0}, {"GPU": 1.0, "CPU": 8.0}, wait=False)
    # busy now, not too small: the run waits, and the driver starts nothing but the engines until they are placed
    assert p.check_resources({"GPU": 5.0, "CPU": 8.0}, {"GPU": 1.0, "CPU": 8.0}, wait=False) is False
    assert "waiting up to 300 s for resources" in capsys.readouterr().out
    assert p.check_resources({"GPU": 1.0, "CPU": 8.0}, {"GPU": 1.0, "CPU": 8.0}, wait=True) is False  # may grow
    assert "waiting up to 300 s for resources: rollout engines + trainer ranks need 5 GPUs" in capsys.readouterr().out
    assert p.check_resources({"GPU": 5.0, "CPU": 8.0}, {"GPU": 5.0, "CPU": 8.0}, wait=False) is True  # all fits now
    assert capsys.readouterr().out == ""


def test_batch_sizes_must_multiply_to_the_global_batch():
    from east_ds.config import TrainConfig, check_batch_sizes

    cfg = TrainConfig(global_batch_size=16, micro_batch_size=2, gradient_accumulation_steps=4)
    check_batch_sizes(cfg, 2)  # 2 x 4 x 2 = 16
    with pytest.raises(ValueError, match=r"x world size \(4\) = 32 != global_batch_size \(16\)"):
        check_batch_sizes(cfg, 4)


def test_placement_resources_are_mappings_of_numbers():
    cfg = load_config(None, ["placement.engine_resources={node_b: 1}", "placement.trainer_resources.node_a=0.5"])
    assert cfg.placement.engine_resources == {"node_b": 1.0}
    assert cfg.placement.trainer_resources == {"node_a": 0.5}
    assert load_config(None).placement.engine_resources == {}
    with pytest.raises(ConfigError, match=r"placement.engine_resources: expected a mapping, got 3"):
        load_config(None, ["placement.engine_resources=3"])
    with pytest.raises(ConfigError, match=r"placement.trainer_resources.gpu_a: expected a number, got 'many'"):
        load_config(None, ["placement.trainer_resources={gpu_a: many}"])


def test_the_loss_and_value_tables_name_the_same_ones_as_the_config():
    """Adding a loss is a row in schema.LOSSES, a selection in weighting.selection.SELECT and a per-example loss in
    training.losses.LOSS_FNS, and a name in TrainConfig.loss; adding an uncertainty value is a row in
    weighting.mapping.VALUES and a name in WeightingConfig.value. A name missing from any of them fails here."""
    import typing

    from east_ds.config import TrainConfig, WeightingConfig
    from east_ds.schema import LOSSES
    from east_ds.training.losses import LOSS_FNS
    from east_ds.weighting.mapping import VALUES
    from east_ds.weighting.selection import SELECT

    def literal(cls, name):
        return list(typing.get_args(typing.get_type_hints(cls)[name]))

    assert list(SELECT) == list(LOSS_FNS) == list(LOSSES) == literal(TrainConfig, "loss")
    assert list(VALUES) == literal(WeightingConfig, "value")
    assert TrainConfig().loss in LOSSES and WeightingConfig().value in VALUES


def test_each_loss_row_is_consistent():
    """The reference phase scores every sequence column into one reference column; the KL and label columns
    belong to the examples table; every table starts with question_id, prompt and ends with weight."""
    from east_ds.schema import LOSSES, loss_spec

    for name, spec in LOSSES.items():
        cols = spec.example_columns
        assert cols[:2] == ("question_id", "prompt") and cols[-1] == "weight", name
        assert set(spec.sequence_columns) <= set(cols), name
        assert not spec.needs_reference or len(spec.reference_columns) == len(spec.sequence_columns), name
        assert spec.kl_column in (None, *spec.sequence_columns) and spec.label_column in (None, *cols), name
        assert not set(spec.reference_columns) & set(cols), name
    assert [n for n, s in LOSSES.items() if s.needs_reference] == ["dpo", "kto"]
    assert {n: s.sequences_with_grad for n, s in LOSSES.items()} == {"sft": 1, "dpo": 2, "kto": 1}
    with pytest.raises(ValueError, match=r"unknown loss 'ppo'; choose one of \['dpo', 'kto', 'sft'\]"):
        loss_spec("ppo")
