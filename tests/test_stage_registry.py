"""The stage registry and the batch spec: one definition of each stage, one layout of its batch."""
import dataclasses

import numpy as np
import pytest

from t1_jax import config as config_lib
from t1_jax.config import ConfigError, ExperimentConfig
from t1_jax.data import batch_spec as bs
from t1_jax.stages import registry


def test_every_stage_resolves_and_validates():
    for name, spec in registry.STAGES.items():
        assert spec.name == name and spec.query_kind in bs.QUERY_KINDS
        for ref in (spec.build, spec.programs, spec.batch):
            assert callable(registry.resolve(ref)), ref
        cfg = config_lib.apply_overrides(ExperimentConfig(), [f"trainer.stage={name}"])
        config_lib.validate(cfg)
    assert [s.with_reasoning for s in registry.STAGES.values()] == [False, True, False]
    with pytest.raises(ConfigError, match="trainer.stage must be one of contrastive, reasoning, grpo; got 'sft'"):
        config_lib.validate(dataclasses.replace(ExperimentConfig(), trainer=config_lib.TrainerConfig(stage="sft")))
    with pytest.raises(ConfigError, match="trainer.stage must be one of"):
        registry.stage_spec("sft")


def test_a_new_stage_is_one_registry_entry(monkeypatch):
    """What docs/architecture.md's "Adding a stage" promises: config validation, the trainer's builder lookup and
    compile-check's program lookup all follow the registry."""
    spec = registry.StageSpec("sft", "stage 2b (sft)", "query_with_reasoning",
                              build="t1_jax.stages.contrastive:build_stage",
                              programs="t1_jax.compile_check:contrastive_programs")
    monkeypatch.setitem(registry.STAGES, "sft", spec)
    cfg = config_lib.apply_overrides(ExperimentConfig(), ["trainer.stage=sft"])
    config_lib.validate(cfg)
    assert registry.stage_spec("sft") is spec and spec.with_reasoning
    assert spec.batch_spec(cfg)["q_ids"][0] == registry.STAGES["reasoning"].batch_spec(cfg)["q_ids"][0]
    from t1_jax import compile_check

    assert compile_check.programs_for("sft") == spec.compile_programs
    with pytest.raises(ConfigError, match="no programs for 'nope'; known: contrastive, reasoning, grpo, sft, generate"):
        compile_check.programs_for("nope")


def test_batch_spec_layout_and_logical_axes():
    cfg = config_lib.apply_overrides(ExperimentConfig(), ["data.global_batch_size=8", "data.num_hard_negatives=3",
                                                          "data.max_positives=2", "data.length_buckets=64,128",
                                                          "text.max_query_tokens=40", "text.max_doc_tokens=100"])
    spec = registry.STAGES["contrastive"].batch_spec(cfg)
    assert {k: s for k, (s, _, _) in spec.items()} == {
        "q_ids": (8, 64), "q_valid": (8, 64), "q_loss": (8, 64), "d_ids": (32, 128), "d_valid": (32, 128),
        "doc_keys": (32,), "pos_col": (8,), "pos_keys": (8, 2)}  # query 40 + <embtoken> -> 64; documents 100 -> 128
    assert all(d == np.int32 for _, d, _ in spec.values())
    axes = bs.logical_axes(spec)
    assert all(a[0] == "batch" for a in axes.values())
    assert registry.STAGES["contrastive"].batch_spec(cfg, rows=2)["d_ids"][0] == (8, 128)
    # Buckets that hold the data but not the budgets' maximum (the quickstart's): the longest batch has no spec, but
    # the trainer's shardings need none of the lengths.
    short = config_lib.apply_overrides(cfg, ["data.length_buckets=24,40"])
    with pytest.raises(ValueError, match="exceeds the largest length bucket 40"):
        registry.STAGES["reasoning"].batch_spec(short)
    for spec in registry.STAGES.values():
        assert spec.batch_axes(short) == axes


def test_check_batch_names_every_difference():
    spec = bs.contrastive_spec(2, 2, 1, 8, 4)
    good = {k: np.zeros(s, d) for k, (s, d, _) in spec.items()}
    bs.check_batch(good, spec)
    bad = dict(good, q_ids=np.zeros((2, 9), np.int32), d_valid=np.zeros((4, 4), bool), extra=np.zeros(1))
    del bad["pos_col"]
    with pytest.raises(ValueError) as info:
        bs.check_batch(bad, spec)
    message = str(info.value)
    for part in ("missing pos_col", "unexpected extra", "q_ids is int32[2, 9], the spec says int32[2, 8]",
                 "d_valid is bool[4, 4]"):
        assert part in message, message


def test_abstract_batch_carries_the_trainers_shardings():
    from t1_jax import mesh as mesh_lib
    from t1_jax.config import MeshConfig
    from t1_jax.trainer import batch_shardings

    mesh = mesh_lib.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    spec = bs.contrastive_spec(8, 2, 3, 16, 8)
    abstract = bs.abstract_batch(spec, mesh)
    default = batch_shardings(mesh, {k: s for k, (s, _, _) in spec.items()})  # the trainer's default before specs
    from_spec = batch_shardings(mesh, {k: s for k, (s, _, _) in spec.items()}, bs.logical_axes(spec))
    for k in spec:
        assert abstract[k].sharding.spec == default[k].spec == from_spec[k].spec, k
