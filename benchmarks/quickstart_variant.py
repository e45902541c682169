"""Run `t1 quickstart` (full plan) with the task preset and the stage plan changed: the stage-3 experiments of
docs/quickstart.md ("Stage 3 with an imperfect teacher") were run with this script.

    python benchmarks/quickstart_variant.py --workdir /tmp/e2 --seed 0 --shortcut-templates 3 --shortcut-rate 0.7 \
        --num-grpo 0 --lrs 2e-3,3e-3,2e-4 --steps 100,600,60

Re-running in the same workdir reuses finished stages (as `t1 quickstart` does): delete `stage3/` and `eval/stage3/` to
rerun stage 3 alone with other settings. `--control shuffled-rewards` adds the control beside it.
"""
from __future__ import annotations

import argparse
import dataclasses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shortcut-templates", default="3", help="comma-separated QUERY_TEMPLATES indices ('' = off)")
    parser.add_argument("--shortcut-rate", type=float, default=0.7)
    parser.add_argument("--num-grpo", type=int, default=0, help="problems kept out of stages 1-2 for stage 3")
    parser.add_argument("--lrs", default="2e-3,3e-3,2e-5", help="peak lr of stages 1, 2, 3")
    parser.add_argument("--steps", default="100,600,40", help="steps of stages 1, 2, 3")
    parser.add_argument("--beta", type=float, default=0.02, help="stage-3 KL coefficient")
    parser.add_argument("--stage3-batch", type=int, default=16, help="stage-3 queries per step")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--control", default="none")
    args = parser.parse_args()

    from t1_jax.quickstart import pipeline, task

    task.PRESETS["full"] = dataclasses.replace(
        task.PRESETS["full"], shortcut_templates=tuple(int(t) for t in args.shortcut_templates.split(",") if t),
        shortcut_rate=args.shortcut_rate, num_grpo=args.num_grpo)
    plan = pipeline.PLANS["full"]
    pipeline.PLANS["full"] = dataclasses.replace(
        plan, lrs=tuple(float(x) for x in args.lrs.split(",")), steps=tuple(int(x) for x in args.steps.split(",")),
        batches=plan.batches[:2] + (args.stage3_batch,), group_size=args.group_size)
    base_stage_config = pipeline.stage_config

    def stage_config(plan, tokenizer_dir, train_jsonl, stage, init_from, seed):
        cfg = base_stage_config(plan, tokenizer_dir, train_jsonl, stage, init_from, seed)
        return dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, beta=args.beta)) if stage == 2 else cfg

    pipeline.stage_config = stage_config
    pipeline.run(args.workdir, "full", args.seed, control=args.control)


if __name__ == "__main__":
    main()
