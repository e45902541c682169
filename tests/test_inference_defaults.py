"""Inference decodes with inference settings: greedy and the budget the model was trained to stop within, never the
training run's rollout sampling; model/inference.json wins over the run config; --set sampling.* wins over both."""
import dataclasses
import json
import logging

import pytest
from flax import nnx

from t1_jax import cli, inference_defaults
from t1_jax.config import (ConfigError, ExperimentConfig, ModelConfig, RetrievalConfig, SamplingConfig, TrainerConfig,
                           save_json)
from t1_jax.encoder import Encoder
from t1_jax.model import Qwen3
from t1_jax.model.params_io import save_model
from t1_jax.quickstart.tokenizer import text_config, train_tokenizer
from t1_jax.text import load_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa river stone cloud seven forty".split()
ROLLOUT = SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=5, prompt_buckets=(64, 128))


def _stage3_config(tok_dir, tokenizer) -> ExperimentConfig:
    return ExperimentConfig(
        text=text_config(tok_dir, max_query_tokens=96, max_doc_tokens=96, max_reasoning_tokens=9),
        sampling=ROLLOUT, retrieval=RetrievalConfig(encode_batch_size=4), trainer=TrainerConfig(stage="grpo"),
        model=ModelConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                          num_kv_heads=1, head_dim=16, emb_token_id=tokenizer.convert_tokens_to_ids("<embtoken>"),
                          eos_token_ids=(tokenizer.eos_token_id,), pad_token_id=0))


@pytest.fixture(scope="module")
def stage3_run(tmp_path_factory):
    """A stage-3-like workdir saved before inference.json existed: config.json samples at temperature 1."""
    root = tmp_path_factory.mktemp("run")
    tok_dir = train_tokenizer([" ".join(WORDS)] * 4, vocab_size=300, out_dir=str(root / "tok"))
    tokenizer = load_tokenizer(tok_dir)
    cfg = _stage3_config(tok_dir, tokenizer)
    save_model(str(root / "model"), Qwen3(cfg.model, rngs=nnx.Rngs(7)))
    tokenizer.save_pretrained(str(root / "model" / "tokenizer"))
    save_json(cfg, str(root / "config.json"))
    return root, cfg


def test_decoding_by_stage_is_greedy_with_the_trained_budget():
    base = ExperimentConfig(sampling=ROLLOUT)
    by_stage = {stage: inference_defaults.decoding_for(dataclasses.replace(base, trainer=TrainerConfig(stage=stage)))
                for stage in ("contrastive", "reasoning", "grpo")}
    assert {s.temperature for s in by_stage.values()} == {0.0}
    assert {(s.top_k, s.top_p) for s in by_stage.values()} == {(0, 1.0)}
    assert by_stage["grpo"].max_new_tokens == 6  # the rollout budget GRPO rewarded under
    assert by_stage["reasoning"].max_new_tokens == base.text.max_reasoning_tokens != 6  # the teacher traces' budget
    assert by_stage["contrastive"].max_new_tokens == 6
    assert all(s.prompt_buckets == (64, 128) for s in by_stage.values())


def test_encoder_from_a_stage3_run_decodes_greedily_and_says_so(stage3_run, caplog):
    root, cfg = stage3_run
    with caplog.at_level(logging.INFO, logger="t1_jax.encoder"):
        enc = Encoder.from_checkpoint(str(root), show_progress=False)
    assert enc.sampling == dataclasses.replace(ROLLOUT, temperature=0.0, top_k=0)
    assert "query decoding: greedy, up to 6 reasoning tokens" in caplog.text
    queries = ["alpha beta seven", "river stone forty cloud"]
    _, first, _ = enc.encode_queries(queries, seed=0)
    _, second, _ = enc.encode_queries(queries, seed=1)
    assert first == second  # greedy: the seed cannot matter


def test_inference_json_wins_over_the_run_config_and_set_wins_over_both(stage3_run, tmp_path, capsys):
    root, cfg = stage3_run
    inference_defaults.write(str(root / "model"), dataclasses.replace(
        cfg, sampling=dataclasses.replace(ROLLOUT, max_new_tokens=3)))
    try:
        saved = json.loads((root / "model" / "inference.json").read_text())
        assert saved["sampling"]["temperature"] == 0.0 and saved["sampling"]["max_new_tokens"] == 3
        assert Encoder.from_checkpoint(str(root), show_progress=False).sampling.max_new_tokens == 3

        queries = tmp_path / "q.jsonl"
        queries.write_text("".join(json.dumps({"id": f"q{i}", "query": q}) + "\n"
                                   for i, q in enumerate(["alpha beta", "seven forty cloud", "stone iota"])))
        out_greedy, out_sampled = tmp_path / "g.jsonl", tmp_path / "s.jsonl"
        # cli.main installs its own log handler (basicConfig(force=True)) on the captured stderr
        assert cli.main(["embed", "--checkpoint", str(root), "--queries", str(queries), "--out", str(out_greedy)]) == 0
        err = capsys.readouterr().err
        assert "query decoding: greedy, up to 3 reasoning tokens before <embtoken> (from " in err
        assert "inference.json" in err
        assert cli.main(["embed", "--checkpoint", str(root), "--queries", str(queries), "--out", str(out_sampled),
                         "--set", "sampling.temperature=1.0", "sampling.max_new_tokens=8"]) == 0
        err = capsys.readouterr().err
        assert "query decoding: sampled at temperature 1, up to 8 reasoning tokens" in err
        assert "--set sampling.*" in err
        greedy = [json.loads(x)["reasoning"] for x in out_greedy.read_text().splitlines()]
        sampled = [json.loads(x)["reasoning"] for x in out_sampled.read_text().splitlines()]
        assert greedy != sampled  # a random tiny model sampled over ~300 tokens: the override took effect
    finally:
        (root / "model" / "inference.json").unlink()


def test_a_broken_inference_file_is_one_clear_error(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "inference.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"inference.json: not a valid inference settings file"):
        inference_defaults.read(str(tmp_path / "model"))
    assert inference_defaults.read(str(tmp_path)) is None  # no file: None, the run config decides


def test_a_model_without_run_config_or_inference_file_uses_defaults(tmp_path):
    cfg, source = inference_defaults.run_config(str(tmp_path / "model"))
    assert source == "defaults" and cfg.sampling == SamplingConfig() and cfg.sampling.temperature == 0.0
