"""The README's mteb snippet, run offline on a tiny T1 model and a local BEIR folder: mteb's nDCG@10 equals
`t1 eval --checkpoint` on the same data. Skipped when the `mteb` extra is not installed."""
import json
import re

import pytest

from conftest import REPO
from t1_jax import cli
from tests.test_checkpoint_eval import data, run_dir  # noqa: F401  (module fixtures: tiny model, toy BEIR folder)

mteb = pytest.importorskip("mteb", reason="the mteb extra is not installed (pip install -e '.[mteb]')")


def _readme_snippet() -> str:
    readme = (REPO / "README.md").read_text()
    m = re.search(r"```python\n(import mteb\n.*?)```", readme, re.S)
    assert m, "README.md has no ```python block starting with `import mteb`"
    return m.group(1)


def test_readme_snippet_matches_t1_eval(run_dir, data, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MTEB_CACHE", str(tmp_path / "mteb-cache"))
    snippet = _readme_snippet()
    for path in ("runs/quickstart/stage2", "runs/quickstart/task/beir"):
        assert path in snippet
    code = snippet.replace("runs/quickstart/stage2", str(run_dir)).replace("runs/quickstart/task/beir",
                                                                             str(data["beir"]))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    ndcg = scope["ndcg10"]

    assert cli.main(["eval", "--checkpoint", str(run_dir), "--workdir", str(tmp_path / "work"), "--beir",
                     str(data["beir"]), "--no-bm25", "--no-reasoning", "--name", "t1"]) == 0
    capsys.readouterr()
    scores = json.loads((tmp_path / "work" / "results.json").read_text())["scores"]
    assert ndcg == pytest.approx(scores["t1"]["toy"]["nDCG@10"], abs=1e-4)

    # the direct-query model (no reasoning) matches the second row; its reasoning log stays empty
    from t1_jax.mteb_model import T1MtebModel, beir_task

    direct = T1MtebModel(str(run_dir), reasoning=False)
    result = mteb.evaluate(direct, beir_task(str(data["beir"])), cache=None, show_progress_bar=False)
    got = result.task_results[0].scores["test"][0]["ndcg_at_10"]
    assert got == pytest.approx(scores["t1 (no reasoning)"]["toy"]["nDCG@10"], abs=1e-4)
    assert set(scope["model"].reasoning_log) == {"LocalToyRetrieval"}
