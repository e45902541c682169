"""`t1 quickstart --fast` end to end: every artifact exists and is valid (not the quality)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import FAST_COMPILE, REPO


def test_quickstart_fast_writes_every_artifact(tmp_path):
    env = {**os.environ, "T1_NO_PROGRESS": "1"}
    env["XLA_FLAGS"] = FAST_COMPILE  # a user's laptop: one CPU device (compiled quickly, as every test)
    result = subprocess.run([sys.executable, "-m", "t1_jax.cli", "quickstart", "--fast", "--workdir", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "query decoding: greedy, up to 40 reasoning tokens before <embtoken>" in result.stderr
    for line in ("stage1 (no reasoning)", "stage2 (reasoning)", "stage3 (reasoning)", "bm25", "t1 search",
                 "seconds: task + tokenizer"):
        assert line in result.stdout
    results = json.load(open(tmp_path / "results.json"))
    assert {"stage1 train", "stage2 eval", "stage3 train", "bm25"} <= set(results["timings"])
    assert [r["system"].split()[0] for r in results["rows"]] == ["stage1", "stage2", "stage3", "bm25"]
    for row in results["rows"]:
        assert 0.0 <= row["ndcg10"] <= 1.0 and 0.0 <= row["recall10"] <= 1.0
    for stage in ("stage1", "stage2", "stage3"):
        assert (tmp_path / stage / "model" / "model_config.json").exists()
        assert (tmp_path / stage / "config.json").exists()
        decoding = json.load(open(tmp_path / stage / "model" / "inference.json"))["sampling"]
        assert decoding["temperature"] == 0.0 and decoding["max_new_tokens"] == 40  # stage 3 rolled out at 1.0
        assert any((tmp_path / stage / "checkpoints").iterdir())
        ev = tmp_path / "eval" / stage
        assert (ev / "index" / "meta.json").exists() and (ev / "index" / "ids.txt").exists()
        run_lines = (ev / "run.trec").read_text().splitlines()
        assert len(run_lines) == 32 * 100 and len(run_lines[0].split()) == 6
        reasoning = [json.loads(line) for line in (ev / "reasoning.jsonl").read_text().splitlines()]
        assert len(reasoning) == 32 and all({"query_id", "query", "reasoning"} <= set(r) for r in reasoning)



@pytest.mark.slow  # a second quickstart run (about 40 s on 2 cores); shuffle_rewards itself: test_grpo_stage
def test_quickstart_control_runs_beside_stage3(tmp_path):
    env = {**os.environ, "T1_NO_PROGRESS": "1", "XLA_FLAGS": FAST_COMPILE}
    first = subprocess.run([sys.executable, "-m", "t1_jax.cli", "quickstart", "--fast", "--workdir", str(tmp_path)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stderr[-4000:]

    # The stage-3 control runs beside the real stage 3 in the same workdir, from the same stage 2 (not retrained).
    control = subprocess.run([sys.executable, "-m", "t1_jax.cli", "quickstart", "--fast", "--workdir", str(tmp_path),
                              "--control", "shuffled-rewards"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert control.returncode == 0, control.stderr[-4000:]
    assert "stage1 (contrastive)" not in control.stdout and "stage2 (reasoning): " not in control.stdout
    assert "stage3-shuffled-rewards (grpo)" in control.stdout
    assert (tmp_path / "stage3-shuffled-rewards" / "model" / "model_config.json").exists()
    saved = json.load(open(tmp_path / "stage3-shuffled-rewards" / "config.json"))
    assert saved["grpo"]["shuffle_rewards"] is True
    rows = json.load(open(tmp_path / "results-shuffled-rewards.json"))["rows"]
    assert [r["system"].split()[0] for r in rows] == ["stage1", "stage2", "stage3-shuffled-rewards", "bm25"]
    assert json.load(open(tmp_path / "results.json"))["control"] == "none"  # the real run's results are kept
