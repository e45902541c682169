"""``t1 convert``: Hugging Face Qwen3 checkpoints <-> our orbax model checkpoints."""
from __future__ import annotations

import argparse
import sys

NAME = "convert"
HELP = "convert checkpoints: hf-to-t1 (HF safetensors -> orbax) and t1-to-hf (orbax -> HF safetensors)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    to_t1 = sub.add_parser("hf-to-t1", help="HF folder (config.json + safetensors + tokenizer files) -> orbax model "
                           "folder with its tokenizer (+ <embtoken>) in DST/tokenizer")
    to_t1.add_argument("src", metavar="SRC_DIR")
    to_t1.add_argument("dst", metavar="DST_DIR")
    to_t1.add_argument("--param-dtype", choices=("float32", "bfloat16", "float16"), default=None,
                       help="store parameters in this dtype (default: the checkpoint's)")
    to_t1.add_argument("--emb-token-id", type=int, default=None,
                       help="SRC without tokenizer files: id of <embtoken>, whose embedding row (and LM-head row) is "
                            "set to the mean of the real tokens' rows (the vocabulary grows to a multiple of 128 when "
                            "needed). With a tokenizer the id is the tokenizer's (this flag, if given, must agree)")
    to_t1.add_argument("--real-vocab", type=int, default=None,
                       help="number of real (trained) token rows averaged for <embtoken> (default: the tokenizer's "
                            "size before <embtoken>; without a tokenizer min(--emb-token-id, vocab size))")
    to_hf = sub.add_parser("t1-to-hf", help="orbax model checkpoint -> HF folder that transformers loads")
    to_hf.add_argument("src", metavar="SRC_DIR")
    to_hf.add_argument("dst", metavar="DST_DIR")
    to_hf.add_argument("--tokenizer", default=None, metavar="DIR", help="copy tokenizer files from this folder")
    to_hf.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                       help="safetensors dtype (default: the model's compute dtype, e.g. bfloat16 for a model "
                            "trained with float32 masters and bfloat16 compute; each weight is rounded once)")
    to_hf.add_argument("--max-shard-gb", type=float, default=4.0, help="safetensors shard size limit (GB)")


def run(args: argparse.Namespace) -> int:
    import time

    from t1_jax import fs

    start = time.perf_counter()
    if args.direction == "hf-to-t1":
        from t1_jax.model.hf_import import hf_to_t1

        imported = hf_to_t1(args.src, args.dst, param_dtype=args.param_dtype, emb_token_id=args.emb_token_id,
                            real_vocab=args.real_vocab)
        cfg, averaged = imported.cfg, imported.row_from_mean_of
        token = ("no <embtoken>" if cfg.emb_token_id is None else f"<embtoken> id {cfg.emb_token_id}, " +
                 (f"row = mean of {averaged} rows" if averaged else "its trained row kept"))
        carried = f"tokenizer in {imported.tokenizer}" if imported.tokenizer else "no tokenizer"
        what = f"{args.src} -> {args.dst} (orbax, {cfg.param_dtype}; {carried}; {token})"
    else:
        from t1_jax.model.hf import export_hf
        from t1_jax.model.params_io import load_model

        model = load_model(args.src)
        dtype = args.dtype or model.cfg.compute_dtype
        with fs.local_output_dir(args.dst) as dst, fs.local_copy(args.tokenizer or "") as tokenizer:
            export_hf(model, dst, tokenizer_dir=tokenizer or None, dtype=dtype,
                      max_shard_bytes=int(args.max_shard_gb * (1 << 30)))
        what = f"{args.src} ({model.cfg.param_dtype}) -> {args.dst} (HF safetensors, {dtype})"
        cfg = model.cfg
    print(f"converted {what}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, "
          f"{time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0
