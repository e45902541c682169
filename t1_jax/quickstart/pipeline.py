"""The whole T1 pipeline on the synthetic task, through the real code paths, as ``t1 quickstart`` runs it.

task + tokenizer → stage 1 (contrastive) → stage 2 (teacher reasoning) → stage 3 (GRPO) → for each stage: encode the
corpus into an embedding store → ScaNN index → search held-out queries (stages 2/3 write their reasoning first) →
TREC run + reasoning jsonl → nDCG@10 / Recall@10 against the qrels; plus a BM25 row on the same queries.

Every step calls the same library function as the corresponding ``t1`` subcommand; nothing here is a quickstart-only
version. Re-running in the same workdir resumes: finished stages and encodings are reused.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Optional

from t1_jax import config as config_lib
from t1_jax.config import (ContrastiveConfig, DataConfig, ExperimentConfig, GRPOConfig, MeshConfig, ModelConfig,
                           OptimizerConfig, RetrievalConfig, SamplingConfig, TrainerConfig)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and step counts of one quickstart variant."""

    task: str
    model: ModelConfig
    batches: tuple[int, int, int]  # queries per step: stage 1, stage 2, stage 3 (each sampled group_size times)
    steps: tuple[int, int, int]  # stage 1, 2, 3
    negatives: tuple[int, int, int]  # hard negatives per query and step; in stage 3 they are the reward's near misses
    lrs: tuple[float, float, float]
    sft_weight: float  # stage 2: weight of the teacher-trace cross-entropy next to InfoNCE
    group_size: int
    max_new_tokens: int
    tokenizer_vocab: int
    beta: float = 0.05  # stage 3: KL coefficient to the stage-2 model


PLANS: dict[str, Plan] = {
    "full": Plan(task="full", model=ModelConfig(vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=4,
                                                num_heads=4, num_kv_heads=2, head_dim=32, max_position_embeddings=512,
                                                scan_layers=False),
                 batches=(64, 32, 16), steps=(50, 700, 40), negatives=(1, 1, 3), lrs=(2e-3, 3e-3, 1e-4),
                 sft_weight=4.0, group_size=8, max_new_tokens=32, tokenizer_vocab=1024, beta=0.05),
    "fast": Plan(task="fast", model=ModelConfig(vocab_size=896, hidden_size=64, intermediate_size=128, num_layers=2,
                                                num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=512,
                                                scan_layers=False),
                 batches=(16, 16, 8), steps=(12, 12, 2), negatives=(1, 1, 3), lrs=(2e-3, 2e-3, 1e-5),
                 sft_weight=4.0, group_size=4, max_new_tokens=40, tokenizer_vocab=1024),
}

STAGES = (("stage1", "contrastive"), ("stage2", "reasoning"), ("stage3", "grpo"))
# Stage-3 controls (t1 quickstart --control NAME): the same steps from the same stage 2, written to stage3-NAME/ so a
# workdir holds the real run and its controls side by side.
CONTROLS = {
    "none": lambda cfg: cfg,
    "shuffled-rewards": lambda cfg: dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, shuffle_rewards=True)),
}
EVAL_BATCH = 64  # documents / queries per encoding step in the evaluation


def stage_config(plan: Plan, tokenizer_dir: str, train_jsonl: str, stage: int, init_from: str,
                 seed: int) -> ExperimentConfig:
    from t1_jax.quickstart.tokenizer import text_config

    name, kind = STAGES[stage]
    return ExperimentConfig(
        name=f"quickstart-{name}",
        model=plan.model,
        mesh=MeshConfig(data=-1, fsdp=1, tensor=1),
        # Teacher traces and rollouts share one budget, so every stage's model/inference.json decodes with it.
        text=text_config(tokenizer_dir, max_reasoning_tokens=plan.max_new_tokens),
        data=DataConfig(train_path=train_jsonl, global_batch_size=plan.batches[stage],
                        num_hard_negatives=plan.negatives[stage], seed=seed + stage,
                        length_buckets=(24, 32, 48, 56, 64, 96)),  # short texts: pad little (queries + traces: 38-52)
        optimizer=OptimizerConfig(lr=plan.lrs[stage], warmup_steps=min(50, plan.steps[stage] // 10),
                                  weight_decay=0.0 if stage == 2 else 0.01),
        loss=ContrastiveConfig(temperature=0.05, sft_weight=plan.sft_weight, ce_chunk_size=64),
        sampling=SamplingConfig(max_new_tokens=plan.max_new_tokens, temperature=0.0, prompt_buckets=(32, 48)),
        grpo=GRPOConfig(group_size=plan.group_size, rollout_temperature=1.0, beta=plan.beta,
                        rewards=(("ndcg", 1.0), ("forced_penalty", 0.2)), aux_infonce_weight=0.0,
                        logprob_chunk_size=64),
        trainer=TrainerConfig(stage=kind, num_steps=plan.steps[stage], seed=seed + stage, init_from=init_from,
                              log_every=max(1, plan.steps[stage] // 10),
                              checkpoint_every=max(1, plan.steps[stage] // 2),
                              keep_checkpoints=1),
        retrieval=RetrievalConfig(embedding_dtype="float32", encode_batch_size=64),
    )


@dataclasses.dataclass
class Row:
    system: str
    ndcg10: float
    recall10: float
    reasoning_tokens: float
    seconds: float
    trace_accuracy: Optional[dict] = None  # held-out: {"all": .., "teacher shortcut phrasings": .., "others": ..}


def trace_accuracy(eval_dir: str, task_dir: str, shortcut_templates) -> dict:
    """Share of held-out generated traces whose final words name the right answer: overall, on the phrasings where
    the teacher took its shortcut, and on the others (diagnostics: nothing trains or tunes on it)."""
    from t1_jax.quickstart.task import answer_in_reasoning

    with open(os.path.join(task_dir, "heldout.jsonl")) as f:
        held = {row["query_id"]: row for row in map(json.loads, f)}
    groups: dict[str, list[bool]] = {"all": [], "teacher shortcut phrasings": [], "others": []}
    with open(os.path.join(eval_dir, "reasoning.jsonl")) as f:
        for row in map(json.loads, f):
            h = held[row["query_id"]]
            ok = answer_in_reasoning(row["reasoning"]) == h["answer"]
            groups["all"].append(ok)
            groups["teacher shortcut phrasings" if h.get("template") in shortcut_templates else "others"].append(ok)
    return {k: round(sum(v) / len(v), 4) for k, v in groups.items() if v}


def _evaluate_model(model_dir: str, out_dir: str, task_dir: str, reasoning: bool, batch: int) -> Row:
    """Encode the corpus (store) → ScaNN index → search the held-out queries → TREC run → metrics."""
    from t1_jax.data.readers import beir_document_text, load_beir
    from t1_jax.encoder import Encoder
    from t1_jax.retrieval import store as store_lib
    from t1_jax.retrieval.index import build_index
    from t1_jax.retrieval.metrics import evaluate_run
    from t1_jax.retrieval.trec import run_from_arrays, write_run

    t0 = time.time()
    data = load_beir(os.path.join(task_dir, "beir"), "test")
    encoder = Encoder.from_checkpoint(model_dir, batch_size=batch)
    doc_ids = list(data.corpus)
    store = store_lib.encode_corpus(((d, beir_document_text(data.corpus[d])) for d in doc_ids),
                                    encoder.encode_documents, os.path.join(out_dir, "embeddings"), batch_size=batch,
                                    dtype="float32", fingerprint=encoder.fingerprint)
    index = build_index(store.read(), store.ids, os.path.join(out_dir, "index"), fingerprint=encoder.fingerprint)
    qids = list(data.queries)
    q_emb, texts, stats = encoder.encode_queries([data.queries[q] for q in qids], reasoning=reasoning)
    scores, ids = index.search(q_emb, 100)
    run = run_from_arrays(qids, scores, ids)
    write_run(os.path.join(out_dir, "run.trec"), run, tag=os.path.basename(out_dir))
    with open(os.path.join(out_dir, "reasoning.jsonl"), "w") as f:
        for qid, text in zip(qids, texts):
            f.write(json.dumps({"query_id": qid, "query": data.queries[qid], "reasoning": text}) + "\n")
    metrics = evaluate_run(run, data.qrels, ks=(10,))
    return Row(os.path.basename(out_dir), metrics["nDCG@10"], metrics["Recall@10"],
               stats.get("mean_generated_tokens", 0.0), time.time() - t0)


def _bm25_row(task_dir: str) -> Row:
    from t1_jax.data.readers import beir_document_text, load_beir
    from t1_jax.retrieval.bm25 import bm25_run
    from t1_jax.retrieval.metrics import evaluate_run

    t0 = time.time()
    data = load_beir(os.path.join(task_dir, "beir"), "test")
    doc_ids = list(data.corpus)
    qids = list(data.queries)
    run = bm25_run(doc_ids, [beir_document_text(data.corpus[d]) for d in doc_ids], qids,
                   [data.queries[q] for q in qids], k=100)
    metrics = evaluate_run(run, data.qrels, ks=(10,))
    return Row("bm25", metrics["nDCG@10"], metrics["Recall@10"], 0.0, time.time() - t0)


def format_table(rows: list[Row]) -> str:
    """The results (no timings: the same seed prints the same table)."""
    lines = [f"{'system':<36} {'nDCG@10':>8} {'R@10':>7} {'reasoning tokens':>17} {'trace acc':>10} "
             f"{'(shortcut / other phrasings)':>29}"]
    for r in rows:
        acc = r.trace_accuracy or {}
        split = (f"{acc['teacher shortcut phrasings']:.2f} / {acc['others']:.2f}"
                 if {"teacher shortcut phrasings", "others"} <= set(acc) else "")
        lines.append(f"{r.system:<36} {r.ndcg10:>8.4f} {r.recall10:>7.4f} {r.reasoning_tokens:>17.1f} "
                     f"{(format(acc['all'], '.3f') if acc else '–'):>10} {split:>29}")
    return "\n".join(lines)


def run(workdir: str, variant: str = "full", seed: int = 0, print_fn=print, control: str = "none") -> list[Row]:
    from t1_jax.quickstart.task import PRESETS, generate_task, write_task
    from t1_jax.quickstart.tokenizer import text_config, tokenizer_texts, train_tokenizer
    from t1_jax.stages import build

    plan = PLANS[variant]
    t_start = time.time()
    if "://" in workdir:
        raise ValueError(f"--workdir {workdir}: the quickstart is a local CPU demo; give a local folder")
    workdir = os.path.abspath(workdir)
    task_dir = os.path.join(workdir, "task")
    task = generate_task(dataclasses.replace(PRESETS[plan.task], seed=seed))
    files = write_task(task, task_dir)
    tok_dir = os.path.join(workdir, "tokenizer")
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        train_tokenizer(tokenizer_texts(task.texts(), text_config(tok_dir)), plan.tokenizer_vocab, tok_dir)
    print_fn(f"task: {len(task.train)} training queries ({len({q.problem for q in task.train})} distinct problems), "
             f"{len(task.grpo)} GRPO queries, {len(task.test)} held-out queries, {len(task.corpus)} documents "
             f"-> {task_dir}")

    timings = {"task + tokenizer": time.time() - t_start}
    rows = []
    init_from = ""
    for stage, (name, kind) in enumerate(STAGES):
        cfg = stage_config(plan, tok_dir, files.grpo_jsonl if kind == "grpo" else files.train_jsonl, stage, init_from,
                           seed)
        if kind == "grpo" and control != "none":  # beside the real stage 3, from the same stage 2
            cfg = CONTROLS[control](cfg)
            name = f"{name}-{control}"
        stage_dir = os.path.join(workdir, name)
        t0 = time.time()
        if not os.path.isdir(os.path.join(stage_dir, build.MODEL_SUBDIR)):
            print_fn(f"{name} ({kind}): {plan.steps[stage]} steps")
            build.train(cfg, stage_dir)
        timings[f"{name} train"] = time.time() - t0
        print_fn(f"{name} trained in {timings[f'{name} train']:.0f}s; evaluating")
        row = _evaluate_model(stage_dir, os.path.join(workdir, "eval", name), task_dir, reasoning=stage > 0,
                              batch=EVAL_BATCH)
        row.system = f"{name} ({'reasoning' if stage else 'no reasoning'})"
        if stage:
            row.trace_accuracy = trace_accuracy(os.path.join(workdir, "eval", name), task_dir,
                                                task.cfg.shortcut_templates)
        timings[f"{name} eval"] = row.seconds
        rows.append(row)
        init_from = stage_dir
    rows.append(_bm25_row(task_dir))
    timings["bm25"] = rows[-1].seconds
    table = format_table(rows)
    total = time.time() - t_start
    results_name = "results.json" if control == "none" else f"results-{control}.json"
    with open(os.path.join(workdir, results_name), "w") as f:
        json.dump({"variant": variant, "seed": seed, "control": control, "seconds": round(total, 1),
                   "timings": {k: round(v, 1) for k, v in timings.items()},
                   "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=2)
    print_fn("\n" + table)
    print_fn("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print_fn(f"total wall time {total:.0f}s. Artifacts under {workdir}:")
    print_fn(f"  models       {workdir}/stage{{1,2,3}}/model   (checkpoints, tensorboard, config.json beside)")
    print_fn(f"  index        {workdir}/eval/stage3/index   runs + reasoning: {workdir}/eval/<stage>/run.trec, "
             f"reasoning.jsonl")
    print_fn("Search it yourself:")
    print_fn(f"  t1 search --checkpoint {workdir}/stage3 --index {workdir}/eval/stage3/index "
             f"--corpus {task_dir}/beir/corpus.jsonl --query \"what is 47 plus 38?\"")
    return rows


def load_results(workdir: str) -> Optional[dict]:
    path = os.path.join(workdir, "results.json")
    return json.load(open(path)) if os.path.exists(path) else None


def config_of(workdir: str, stage: str) -> ExperimentConfig:
    return config_lib.load_config(os.path.join(workdir, stage, "config.json"))
