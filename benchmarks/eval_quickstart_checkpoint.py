"""`t1 eval --checkpoint` against the quickstart's own evaluation (issue 20's acceptance check).

After `t1 quickstart [--fast]` (workdir runs/quickstart):

1. `t1 eval --checkpoint runs/quickstart/stage2 --beir runs/quickstart/task/beir` -> nDCG@10 vs the quickstart's
   stage-2 row (results.json);
2. a BRIGHT-layout copy of the task (examples jsonl with gold_ids and excluded_ids, documents jsonl with id/content;
   each query's excluded id is the highest-ranked non-relevant document of the quickstart's own stage-2 run) ->
   nDCG@10 vs the quickstart's run scored with those exclusions;
3. the same BRIGHT evaluation killed (SIGKILL) once the first query part is written, then run again -> the same table.

Prints every number; exit status 1 when a difference exceeds 1e-4 or the tables differ.
    python benchmarks/eval_quickstart_checkpoint.py [--quickstart runs/quickstart] [--stage stage2] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def t1_eval(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "T1_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "t1_jax.cli", "eval", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, **kwargs)


def table(stdout: str) -> str:
    return stdout[stdout.index("nDCG@10"):stdout.index("t1 eval: everything")].strip()


def main() -> int:
    from t1_jax.data.readers import beir_document_text, load_beir
    from t1_jax.retrieval.metrics import evaluate_run, rank
    from t1_jax.retrieval.trec import read_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quickstart", default="runs/quickstart")
    parser.add_argument("--stage", default="stage2")
    parser.add_argument("--out", default="runs/eval-check")
    a = parser.parse_args()
    qs, out = os.path.abspath(a.quickstart), os.path.abspath(a.out)
    data = load_beir(os.path.join(qs, "task", "beir"), "test")
    qs_run = read_run(os.path.join(qs, "eval", a.stage, "run.trec"))
    if os.path.exists(os.path.join(qs, "results.json")):
        rows = json.load(open(os.path.join(qs, "results.json")))["rows"]
        reference = next(r["ndcg10"] for r in rows if r["system"].split()[0] == a.stage)
    else:  # the quickstart still running (later stages): its row is this, computed the same way
        reference = evaluate_run(qs_run, data.qrels, (10,))["nDCG@10"]
    ok = True

    # 1. the BEIR folder
    t0 = time.time()
    beir = t1_eval(["--checkpoint", os.path.join(qs, a.stage), "--beir", os.path.join(qs, "task", "beir"), "--ks",
                    "10", "--workdir", os.path.join(out, "beir")])
    assert beir.returncode == 0, beir.stderr[-3000:]
    got = json.load(open(os.path.join(out, "beir", "results.json")))["scores"][a.stage]["beir"]["nDCG@10"]
    print(table(beir.stdout))
    print(f"BEIR: t1 eval {got:.6f}  quickstart {a.stage} row {reference:.6f}  |diff| {abs(got - reference):.2e}  "
          f"({time.time() - t0:.0f}s)")
    ok &= abs(got - reference) <= 1e-4

    # 2. a BRIGHT-layout copy, with excluded_ids
    excluded = {q: {next(d for d in rank(qs_run[q]) if d not in data.qrels[q])} for q in data.queries}
    bright = os.path.join(out, "bright-layout")
    os.makedirs(os.path.join(bright, "examples"), exist_ok=True)
    os.makedirs(os.path.join(bright, "documents"), exist_ok=True)
    with open(os.path.join(bright, "examples", "quickstart.jsonl"), "w") as f:
        for q, text in data.queries.items():
            f.write(json.dumps({"id": q, "query": text, "reasoning": "", "gold_ids": sorted(data.qrels[q]),
                                "excluded_ids": sorted(excluded[q]), "gold_answer": ""}) + "\n")
    with open(os.path.join(bright, "documents", "quickstart.jsonl"), "w") as f:
        for d, doc in data.corpus.items():
            f.write(json.dumps({"id": d, "content": beir_document_text(doc)}) + "\n")
    expected = evaluate_run(qs_run, data.qrels, (10,), excluded)["nDCG@10"]
    bright_args = ["--checkpoint", os.path.join(qs, a.stage), "--bright", bright, "--ks", "10",
                   "--set", "text.domain_instructions=false", "--query-chunk", "4"]
    t0 = time.time()
    full = t1_eval([*bright_args, "--workdir", os.path.join(out, "bright")])
    assert full.returncode == 0, full.stderr[-3000:]
    got = json.load(open(os.path.join(out, "bright", "results.json")))["scores"][a.stage]["quickstart"]["nDCG@10"]
    print(table(full.stdout))
    print(f"BRIGHT layout (excluded_ids): t1 eval {got:.6f}  quickstart run with the exclusions {expected:.6f}  "
          f"|diff| {abs(got - expected):.2e}  (without exclusions: {reference:.6f}; {time.time() - t0:.0f}s)")
    ok &= abs(got - expected) <= 1e-4
    run = read_run(os.path.join(out, "bright", "quickstart", "run.trec"))
    leaked = sum(d in run[q] for q, ids in excluded.items() for d in ids)
    print(f"excluded ids present in the run: {leaked}")
    ok &= leaked == 0

    # 3. killed after the first query part, then resumed
    killed_dir = os.path.join(out, "bright-killed")
    env = {**os.environ, "T1_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "t1_jax.cli", "eval", *bright_args, "--workdir", killed_dir],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = os.path.join(killed_dir, "quickstart", "queries")
    while proc.poll() is None:
        found = [f for root, _, files in os.walk(parts) for f in files if f.startswith("part-") and
                 f.endswith(".npz")]
        if found:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    kept = sum(f.endswith(".npz") for _, _, files in os.walk(parts) for f in files)
    resumed = t1_eval([*bright_args, "--workdir", killed_dir])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same = table(resumed.stdout) == table(full.stdout)
    print(f"killed with exit status {proc.returncode} after {kept} of 8 query parts; resumed table identical: {same}")
    ok &= same
    t0 = time.time()
    again = t1_eval([*bright_args, "--workdir", killed_dir])
    assert again.returncode == 0, again.stderr[-3000:]
    print(f"re-run on the finished workdir: {time.time() - t0:.1f}s (process start included), same table: "
          f"{table(again.stdout) == table(full.stdout)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
