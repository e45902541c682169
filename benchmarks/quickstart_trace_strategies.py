"""Which strategy does a quickstart model sample, and how often is it right? Per phrasing group of the held-out queries.

GRPO can only reinforce what the policy samples: if a group of rollouts never holds a trace that is both the better
strategy and correct, the advantages carry no preference for it. This script samples every held-out query of a
finished `t1 quickstart` workdir several times (temperature 1, as the stage-3 rollouts) and counts, for the teacher's
shortcut phrasings and the others, the traces that use the full derivation (products: `37*6=30*6+7*6=180+42=222`;
sums: the columns `7+5+0=12,3+8+1=12:122`) or the rounding shortcut (`37*6=40*6=240`, `40+90=130`), and how many of
each end in the right answer.

    python benchmarks/quickstart_trace_strategies.py --workdir runs/quickstart --stage stage2 --samples 4
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a finished `t1 quickstart` workdir")
    parser.add_argument("--stage", default="stage2")
    parser.add_argument("--samples", type=int, default=4, help="samples per query")
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args()

    from t1_jax.config import SamplingConfig
    from t1_jax.encoder import Encoder
    from t1_jax.quickstart.task import answer_in_reasoning

    task = json.load(open(os.path.join(args.workdir, "task", "task.json")))["config"]
    shortcut = set(task.get("shortcut_templates", ()))
    held = [json.loads(line) for line in open(os.path.join(args.workdir, "task", "heldout.jsonl"))]
    encoder = Encoder.from_checkpoint(os.path.join(args.workdir, args.stage), batch_size=64, show_progress=False)
    sampling = SamplingConfig(max_new_tokens=encoder.sampling.max_new_tokens, temperature=args.temperature,
                              prompt_buckets=encoder.sampling.prompt_buckets)
    counts: collections.Counter = collections.Counter()
    for seed in range(args.samples):
        _, traces, _ = encoder.encode_queries([h["query"] for h in held], sampling=sampling, seed=seed)
        for h, trace in zip(held, traces):
            group = "shortcut phrasings" if h["template"] in shortcut else "other phrasings"
            head = trace.rsplit(",", 1)[0]
            derived = re.search(r"\d\+\d\+[01]=", trace) or head.count("=") >= 3  # columns of a sum; a product
            strategy = "full derivation" if derived else "shortcut / other"
            counts[group, strategy] += 1
            counts[group, strategy, "right"] += answer_in_reasoning(trace) == h["answer"]
    print(f"{args.stage}, {args.samples} samples per held-out query at temperature {args.temperature}")
    print(f"{'phrasings':<20}{'strategy':<20}{'samples':>8}{'right':>7}")
    for group in ("shortcut phrasings", "other phrasings"):
        for strategy in ("full derivation", "shortcut / other"):
            print(f"{group:<20}{strategy:<20}{counts[group, strategy]:>8}{counts[group, strategy, 'right']:>7}")


if __name__ == "__main__":
    main()
