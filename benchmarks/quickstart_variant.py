"""Run `t1 quickstart` (full plan) with the task preset and the stage plan changed: the stage-3 experiments of
docs/quickstart.md ("Why stage 3 has something to learn here", "Stage 3 on the products task") were run with this
script.

    python benchmarks/quickstart_variant.py --workdir /tmp/e2 --task products --shortcut-templates 3 \
        --shortcut-rate 0.7 --num-grpo 0 --lrs 2e-3,3e-3,2e-4 --steps 100,600,60 --beta 0.02
    python benchmarks/quickstart_variant.py --workdir /tmp/b6 --lrs 2e-3,3e-3,2e-4 --steps 50,500,40 \
        --batches 32,32,16 --beta 0.02

`--task full` is the quickstart's task (`SUMS`: two-digit sums, the estimating teacher on two phrasings, traces ending
in digits, 400 GRPO-only problems); `--task products` the products task of earlier quickstarts (two-digit x one-digit,
no GRPO split, answer in words). Every other option overrides the chosen task or plan (defaults: the quickstart's). Re-running in the same workdir reuses finished stages (as `t1 quickstart`
does): delete `stage3/` and `eval/stage3/` to rerun stage 3 alone with other settings. `--control shuffled-rewards`
adds the control beside it.
"""
from __future__ import annotations

import argparse
import dataclasses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=("full", "products"), default="full", help="the task to start from")
    parser.add_argument("--shortcut-templates", default=None, help="comma-separated phrasing indices ('' = off)")
    parser.add_argument("--shortcut-rate", type=float, default=None)
    parser.add_argument("--num-grpo", type=int, default=None, help="problems kept out of stages 1-2 for stage 3")
    parser.add_argument("--kinds", default="", help="problem kinds, e.g. 'add_3x3' or 'mul_2x1:0.7,mul_3x1:0.3'")
    parser.add_argument("--num-train", type=int, default=0, help="training queries (0 = the preset's)")
    parser.add_argument("--answer-digits", action="store_true", help="traces end in the answer's digits, not words")
    parser.add_argument("--lrs", default="2e-3,3e-3,1e-4", help="peak lr of stages 1, 2, 3")
    parser.add_argument("--steps", default="100,700,40", help="steps of stages 1, 2, 3")
    parser.add_argument("--batches", default="64,32,16", help="queries per step of stages 1, 2, 3")
    parser.add_argument("--beta", type=float, default=0.05, help="stage-3 KL coefficient")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--control", default="none")
    args = parser.parse_args()

    from t1_jax.quickstart import pipeline, task

    cfg = task.SUMS if args.task == "full" else task.TaskConfig(num_test=160, kinds=(("mul_2x1", 1.0),))
    overrides = {}
    if args.shortcut_templates is not None:
        overrides["shortcut_templates"] = tuple(int(t) for t in args.shortcut_templates.split(",") if t)
    if args.shortcut_rate is not None:
        overrides["shortcut_rate"] = args.shortcut_rate
    if args.num_grpo is not None:
        overrides["num_grpo"] = args.num_grpo
    if args.kinds:
        overrides["kinds"] = tuple((k.split(":")[0], float(k.split(":")[1]) if ":" in k else 1.0)
                                   for k in args.kinds.split(","))
    if args.num_train:
        overrides["num_train"] = args.num_train
    if args.answer_digits:
        overrides["answer_words"] = False
    task.PRESETS["full"] = dataclasses.replace(cfg, **overrides)
    plan = pipeline.PLANS["full"]
    pipeline.PLANS["full"] = dataclasses.replace(
        plan, lrs=tuple(float(x) for x in args.lrs.split(",")), steps=tuple(int(x) for x in args.steps.split(",")),
        batches=tuple(int(x) for x in args.batches.split(",")), group_size=args.group_size,
        max_new_tokens=args.max_new_tokens)
    base_stage_config = pipeline.stage_config

    def stage_config(plan, tokenizer_dir, train_jsonl, stage, init_from, seed):
        cfg = base_stage_config(plan, tokenizer_dir, train_jsonl, stage, init_from, seed)
        return dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, beta=args.beta)) if stage == 2 else cfg

    pipeline.stage_config = stage_config
    pipeline.run(args.workdir, "full", args.seed, control=args.control)


if __name__ == "__main__":
    main()
