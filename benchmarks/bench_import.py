"""HF checkpoint import: our streaming importer vs ``transformers`` ``from_pretrained``, wall time and peak RSS.

Writes (in a subprocess) a synthetic checkpoint with the real Qwen3-4B shapes (random bfloat16, sharded safetensors +
index, ~8 GB at 36 layers) to a temporary folder, loads it in a fresh subprocess with each loader, and deletes it
afterwards. Peak RSS is the child's ``ru_maxrss`` (exact; every process is started from this small parent, which never
imports JAX, because Linux carries ``ru_maxrss`` across fork/exec) and a psutil poll every 20 ms.

    python benchmarks/bench_import.py              # 36 layers (needs ~20 GB of free memory)
    python benchmarks/bench_import.py --layers 12  # same widths, fewer layers, when memory is tight
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CHILD_OURS = """
import os, sys, time
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, {repo!r})
import jax
from t1_jax.model.hf import import_hf
start = time.perf_counter()
model = import_hf({src!r})
jax.block_until_ready(jax.tree.leaves(model.layers.arrays()))
print("WALL", time.perf_counter() - start)
import resource
print("MAXRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

CHILD_HF = """
import time, torch, transformers
start = time.perf_counter()
model = transformers.AutoModelForCausalLM.from_pretrained({src!r}, dtype=torch.bfloat16)
print("WALL", time.perf_counter() - start)
import resource
print("LOADRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
with torch.no_grad():  # weights are lazily paged in from the memory-mapped files: touch them all
    for p in model.parameters():
        p.sum()
print("TOUCHWALL", time.perf_counter() - start)
import resource
print("MAXRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def write_checkpoint(directory: str, layers: int) -> int:
    import ml_dtypes
    import numpy as np

    from t1_jax.model import PRESETS, abstract_model
    from t1_jax.model import safetensors_io as st
    from t1_jax.model.hf import key_map
    from t1_jax.model.presets import to_hf_config

    cfg = dataclasses.replace(PRESETS["qwen3-4b-instruct-2507"], num_layers=layers)
    rng = np.random.default_rng(0)
    shapes = {e.hf_name: e.hf_shape for e in key_map(abstract_model(cfg))}  # shapes only, no parameters
    specs = [(name, shape, np.dtype(ml_dtypes.bfloat16)) for name, shape in shapes.items()]

    def produce(name):
        shape = shapes[name]
        if name.endswith("norm.weight"):
            return np.ones(shape, ml_dtypes.bfloat16)
        return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(ml_dtypes.bfloat16)

    st.write_checkpoint(directory, specs, produce, max_shard_bytes=4 << 30)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(to_hf_config(cfg, "bfloat16"), f)
    return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))


def measure(code: str) -> dict:
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    polled = 0
    while proc.poll() is None:
        try:
            polled = max(polled, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{err[-3000:]}")
    values = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()
              if line.startswith(("WALL", "MAXRSS", "LOADRSS", "TOUCHWALL"))}
    return {"wall_s": values["WALL"], "peak_rss": values["MAXRSS"], "polled_peak_rss": polled,
            "load_rss": values.get("LOADRSS"), "touch_wall_s": values.get("TOUCHWALL")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--dir", default=None, help="where to write the synthetic checkpoint (default: a temp dir)")
    parser.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)  # the writer subprocess
    args = parser.parse_args()
    if args.write_only:
        print("SIZE", write_checkpoint(args.dir, args.layers))
        return 0

    import psutil

    directory = args.dir or tempfile.mkdtemp(prefix="t1_bench_import_")
    try:
        start = time.perf_counter()
        writer = subprocess.run([sys.executable, os.path.abspath(__file__), "--write-only", "--dir", directory,
                                 "--layers", str(args.layers)], capture_output=True, text=True)
        if writer.returncode != 0:
            raise RuntimeError(f"writing the checkpoint failed:\n{writer.stderr[-3000:]}")
        size = int([line for line in writer.stdout.splitlines() if line.startswith("SIZE")][-1].split()[1])
        print(f"wrote synthetic Qwen3-4B-shaped checkpoint ({args.layers} layers, bf16): {size / 1e9:.2f} GB in "
              f"{time.perf_counter() - start:.0f} s to {directory}")
        available = psutil.virtual_memory().available
        print(f"machine: {os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM "
              f"({available / 2**30:.0f} GiB available), shared with other jobs")
        results = {}
        for name, template in (("ours (import_hf)", CHILD_OURS), ("transformers from_pretrained", CHILD_HF)):
            results[name] = measure(template.format(repo=REPO, src=directory))
            r = results[name]
            print(f"{name:30s} wall {r['wall_s']:6.1f} s   peak RSS {r['peak_rss'] / 1e9:6.2f} GB "
                  f"= {r['peak_rss'] / size:.2f}x checkpoint size (psutil poll {r['polled_peak_rss'] / 1e9:.2f} GB)")
            if r["load_rss"]:
                print(f"{'':30s} (right after from_pretrained, before the lazily mapped weights are touched: "
                      f"{r['load_rss'] / 1e9:.2f} GB; touching all weights took it to {r['touch_wall_s']:.1f} s)")
        ours, ref = results["ours (import_hf)"], results["transformers from_pretrained"]
        print(f"ratio ours/transformers: wall {ours['wall_s'] / ref['wall_s']:.2f}x, "
              f"peak RSS {ours['peak_rss'] / ref['peak_rss']:.2f}x (target: our peak RSS well under 2x "
              f"the checkpoint size)")
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
