"""``t1 generate``: teacher reasoning for stage 2. Query records in, the same records with ``reasoning`` out.

The loop, resuming and multi-host layout are ``t1_jax.teacher_run``; the prompt is ``t1_jax.teacher_prompt``; every
trace comes from ``t1_jax.teacher.generate_traces``. docs/generate.md describes the command and our choices.
"""
from __future__ import annotations

import argparse
import json

NAME = "generate"
HELP = ("write a teacher's reasoning trace into every query record (stage-2 training data); resumable, one "
        "program over the slice's devices")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="the teacher: a `t1 convert hf-to-t1` folder or a "
                        "`t1 train` workdir (a plain Qwen3 chat model)")
    parser.add_argument("--queries", required=True, help="jsonl(.gz) records: training examples {query, positives, "
                        "...}, BEIR queries {_id, text} or BRIGHT examples {id, query, ...}")
    parser.add_argument("--out", required=True, help="jsonl: the same records with 'reasoning' and 'teacher' added "
                        "(local or gs://); run the same command again to resume")
    parser.add_argument("--config", default=None, metavar="EXP", help="experiment whose sampling.*, text.* and "
                        "mesh.* apply (e.g. the stage-2 config); default: the built-in defaults")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides", action="extend",
                        help="dotted overrides, e.g. --set sampling.max_new_tokens=512 sampling.temperature=0.7 "
                        "mesh.tensor=4")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=None, metavar="TEXT", help="the teacher's user message, with {task} "
                        "and {query} (default: t1_jax.teacher_prompt.DEFAULT_TEMPLATE)")
    prompt.add_argument("--prompt-file", default=None, metavar="FILE", help="read --prompt from a file")
    parser.add_argument("--domain", default=None, help="domain of records without a 'domain' field (its "
                        "instruction becomes the prompt's {task})")
    parser.add_argument("--instruction-field", default="instruction", help="record field holding the record's own "
                        "{task} line, which wins over its domain (default: instruction)")
    parser.add_argument("--samples", type=int, default=1, help="traces per record, each written as its own line "
                        "(ids become <id>#k); needs sampling.temperature > 0")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (each row's draws derive from it, the "
                        "record id and the sample index)")
    parser.add_argument("--keep-cut", action="store_true", help="write traces that hit sampling.max_new_tokens as "
                        "they are (default: an empty reasoning, which stage 2 skips, with the cut text in "
                        "teacher.cut_reasoning)")
    parser.add_argument("--filter", default=None, choices=("bm25", "t1"), help="keep a trace only if, with it, the "
                        "record's positive ranks in the top --filter-top-k of its positives + negatives: scored by "
                        "BM25 (query + trace) or by a T1 model (--filter-checkpoint); a trace not kept is written "
                        "with an empty reasoning (default: off; docs/generate.md)")
    parser.add_argument("--filter-top-k", type=int, default=1, metavar="K", help="rank the positive must reach "
                        "(default: 1, above every negative)")
    parser.add_argument("--filter-checkpoint", default=None, metavar="DIR", help="the T1 model of --filter t1")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: <checkpoint>/tokenizer)")
    parser.add_argument("--stop-token", default="<|im_end|>", help="the chat end token generation stops at")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per sampler call over the whole mesh "
                        "(default: data.global_batch_size; rounded up to a multiple of data x fsdp)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="rows generated and written at once, the unit "
                        "of resuming (default: 8 batches); keep it when resuming, so the batches are the same")


def _prompt(args: argparse.Namespace, cfg):
    from t1_jax import fs
    from t1_jax.teacher_prompt import DEFAULT_TEMPLATE, TeacherPrompt

    template = fs.read_text(args.prompt_file) if args.prompt_file else args.prompt or DEFAULT_TEMPLATE
    return TeacherPrompt(template=template, default_domain=args.domain, instruction_field=args.instruction_field,
                         max_query_tokens=cfg.text.max_query_tokens)


def run(args: argparse.Namespace) -> int:
    from t1_jax import config as config_lib
    from t1_jax import distributed
    from t1_jax.mesh import batch_shard_count, make_mesh
    from t1_jax.teacher_filter import FilterSettings, make_scorer
    from t1_jax.teacher_io import read_records
    from t1_jax.teacher_prompt import TeacherPrompter, domain_tasks
    from t1_jax.teacher_run import GenerateSettings, load_teacher, open_output, run_generation

    cfg = (config_lib.load_config(args.config, args.overrides) if args.config
           else config_lib.apply_overrides(config_lib.ExperimentConfig(), args.overrides))
    prompt = _prompt(args, cfg)
    problems = prompt.validate()
    if problems:
        raise ValueError("; ".join(problems))
    records = read_records(args.queries, domain_tasks(cfg.text), prompt.default_task, prompt.default_domain,
                           prompt.instruction_field)  # bad input fails here, before the teacher loads
    distributed.initialize(cfg.mesh)
    sink = open_output(args.out)  # an --out that t1 generate did not write is refused here, before the teacher loads
    mesh = make_mesh(cfg.mesh)  # the whole slice: a large teacher may need more chips than one host has
    batch = args.batch_size or cfg.data.global_batch_size
    batch = -(-batch // batch_shard_count(mesh)) * batch_shard_count(mesh)
    if args.filter_checkpoint and not args.filter:
        raise ValueError("--filter-checkpoint is the model of --filter t1: add --filter t1")
    judge = FilterSettings(args.filter, args.filter_top_k, args.filter_checkpoint) if args.filter else None
    settings = GenerateSettings(sampling=cfg.sampling, batch_size=batch, chunk_rows=args.chunk_rows or 8 * batch,
                                samples=args.samples, seed=args.seed, keep_cut=args.keep_cut, filter=judge)
    errors = settings.validate()
    if errors:
        raise ValueError("; ".join(errors))
    scorer = make_scorer(records, judge, mesh) if judge else None  # before the teacher: bad candidates fail early
    teacher = load_teacher(args.checkpoint, mesh, args.tokenizer, args.stop_token)
    prompter = TeacherPrompter(teacher.tokenizer, prompt)
    prompts, cut = prompter.ids([r.query for r in records], [r.task for r in records])
    if cut:
        print(f"t1 generate: {cut} of {len(records)} queries cut to text.max_query_tokens="
              f"{prompt.max_query_tokens} tokens in the teacher prompt")
    s = cfg.sampling
    mode = "greedy" if s.temperature == 0 else f"temperature {s.temperature:g}, top-k {s.top_k}, top-p {s.top_p:g}"
    print(f"t1 generate: {mode}, up to {s.max_new_tokens} tokens before {args.stop_token}; {batch} rows per batch "
          f"on a {'x'.join(map(str, mesh.devices.shape))} mesh (data x fsdp x tensor)")
    summary = run_generation(teacher, records, prompts, sink, settings, out=args.out, scorer=scorer)
    print(json.dumps(summary, indent=2))
    return 0
