"""Search benchmark: ScaNN (t1 index defaults) vs exact search (jitted JAX) vs faiss-cpu IVF-flat, in one run.

For each system: build time, queries/s and recall@10 against exact search, over a sweep of the knob that trades speed
for recall (ScaNN leaves searched, faiss nprobe), and its own peak memory. Then the ratio lines: ScaNN queries/s over
exact, and over faiss at the best setting of each that reaches the target recall.

Data: unit vectors in ``--dim`` dimensions, written once to ``--workdir`` as float32 ``.npy`` files and memory-mapped
by every system. ``--data clustered`` (default) draws them around ``--clusters`` random unit centres (noise of norm
``--spread`` around a centre: overlapping clusters), which gives neighbourhoods the way real embeddings have them;
``--data iid`` draws them uniformly, where every point is nearly equidistant from every other and no partitioned index
can beat a full scan by much (the stress case; ScaNN's build-time tuning then searches nearly every leaf to hold the
recall target). Queries are documents plus noise.

Each system runs in its own subprocess, one after the other, so at most one in-memory copy of the corpus exists
besides the page cache and each system's peak RSS is its own: 1M x 2,560 float32 (9.5 GiB per copy) fits 24 GiB.

    python benchmarks/bench_search.py                               # 1M x 2560, 1000 queries (~13 min on 2 cores)
    python benchmarks/bench_search.py --n 100000                    # 100k
    python benchmarks/bench_search.py --n 20000 --dim 256           # quick
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

_BLOCK = 10_000


def unit_rows(x):
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def write_data(args) -> None:
    """docs.npy [n, d] and queries.npy [q, d] in ``args.workdir`` (reused when the parameters match)."""
    meta_path = os.path.join(args.workdir, "data.json")
    params = {k: getattr(args, k) for k in ("n", "dim", "queries", "clusters", "data", "spread", "query_noise", "seed")}
    if os.path.exists(meta_path) and json.load(open(meta_path)) == params:
        print(f"data: reusing {args.workdir}")
        return
    os.makedirs(args.workdir, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    n, d = args.n, args.dim
    docs = np.lib.format.open_memmap(os.path.join(args.workdir, "docs.npy"), mode="w+", dtype=np.float32,
                                     shape=(n, d))
    centres = (unit_rows(rng.standard_normal((args.clusters, d), dtype=np.float32))
               if args.data == "clustered" else None)
    t0 = time.time()
    for start in range(0, n, _BLOCK):  # float32 throughout, in blocks: no float64 or second copy of the corpus
        stop = min(start + _BLOCK, n)
        noise = rng.standard_normal((stop - start, d), dtype=np.float32)
        if centres is not None:
            noise = centres[rng.integers(0, args.clusters, stop - start)] + noise * np.float32(args.spread / np.sqrt(d))
        docs[start:stop] = unit_rows(noise)
    src = np.asarray(docs[np.sort(rng.integers(0, n, args.queries))])
    queries = unit_rows(src + rng.standard_normal(src.shape, dtype=np.float32)
                        * np.float32(args.query_noise / np.sqrt(d)))
    docs.flush()
    del docs
    np.save(os.path.join(args.workdir, "queries.npy"), queries)
    json.dump(params, open(meta_path, "w"))
    print(f"data: wrote {n:,} x {d} ({n * d * 4 / 2**30:.2f} GiB) in {time.time() - t0:.0f}s")


def load(args):
    docs = np.load(os.path.join(args.workdir, "docs.npy"), mmap_mode="r")
    queries = np.load(os.path.join(args.workdir, "queries.npy"))
    return docs, queries


def best_of(fn, repeats=2):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ----------------------------------------------------------------------------------------------------------------
# One subprocess per system: each returns {"rows": [[system, setting, build_s, qps, recall], ...], ...} as JSON
# ----------------------------------------------------------------------------------------------------------------


def phase_exact(args) -> dict:
    import jax

    from t1_jax.retrieval.exact import ExactIndex

    docs, queries = load(args)
    index, build_s = best_of(lambda: ExactIndex(docs, query_block=256), repeats=1)
    del docs  # the JAX copy is the only one now (the memmap pages are cache)
    index.search_indices(queries[:256], args.k)  # compile
    (_, ref), t = best_of(lambda: index.search_indices(queries, args.k), repeats=1 if args.n > 200_000 else 2)
    np.save(os.path.join(args.workdir, "ref.npy"), ref)
    return {"rows": [["exact (JAX, float32)", "-", build_s, len(queries) / t, 1.0]], "qps": len(queries) / t,
            "platform": jax.devices()[0].platform, "jax": jax.__version__}


def phase_scann(args) -> dict:
    from t1_jax.retrieval.index import IndexSettings, build_index
    from t1_jax.retrieval.tune import recall_at_k

    docs, queries = load(args)
    ref = np.load(os.path.join(args.workdir, "ref.npy"))
    # the memmap goes in as is: ScaNN copies what it keeps, so the corpus is in memory once (plus page cache)
    index, build_s = best_of(lambda: build_index(docs, [str(i) for i in range(len(docs))],
                                                 settings=IndexSettings(num_neighbors=args.k)), repeats=1)
    del docs
    s = index.settings
    tuning = index.meta.get("tuning", {})
    out = {"rows": [], "default": None, "settings": {"mode": s.mode, "num_leaves": s.num_leaves,
                                                      "num_leaves_to_search": s.num_leaves_to_search,
                                                      "reorder_k": s.reorder_k},
           "tuning": {k: tuning[k] for k in ("trials", "seconds", "recall", "reached") if k in tuning}}
    sweep = [(v, s.reorder_k) for v in args.leaves if v <= s.num_leaves and v != s.num_leaves_to_search]
    for leaves, reorder in sorted(sweep + [(s.num_leaves_to_search, s.reorder_k)]):
        index.search_indices(queries[:10], args.k, leaves_to_search=leaves, reorder_k=reorder)
        (_, got), t = best_of(lambda: index.search_indices(queries, args.k, leaves_to_search=leaves,
                                                           reorder_k=reorder))
        default = leaves == s.num_leaves_to_search
        row = ["ScaNN tree-AH+reorder", f"leaves={leaves}" + (" (default, tuned)" if default else ""), build_s,
               len(queries) / t, recall_at_k(got, ref)]
        out["rows"].append(row)
        if default:
            out["default"] = row
    return out


def phase_faiss(args) -> dict:
    import faiss

    from t1_jax.retrieval.tune import recall_at_k

    docs, queries = load(args)
    ref = np.load(os.path.join(args.workdir, "ref.npy"))
    nlist = int(round(np.sqrt(args.n)))

    def build():
        quantizer = faiss.IndexFlatIP(args.dim)
        ivf = faiss.IndexIVFFlat(quantizer, args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.spherical = True  # unit-norm data, inner product: the same k-means flavour ScaNN's tree uses
        sample = np.sort(np.random.default_rng(1).choice(args.n, min(args.n, 100 * nlist), replace=False))
        ivf.train(np.ascontiguousarray(docs[sample]))
        for start in range(0, args.n, 100_000):  # add in blocks: faiss keeps its own copy, no second one here
            ivf.add(np.ascontiguousarray(docs[start:start + 100_000]))
        return ivf

    ivf, build_s = best_of(build, repeats=1)
    rows = []
    for nprobe in args.nprobe:
        if nprobe > nlist:
            continue
        ivf.nprobe = nprobe
        (_, got), t = best_of(lambda: ivf.search(queries, args.k))
        rows.append([f"faiss {faiss.__version__} IVF-flat (nlist={nlist}, spherical)", f"nprobe={nprobe}", build_s,
                     len(queries) / t, recall_at_k(got, ref)])
    return {"rows": rows}


PHASES = {"exact": phase_exact, "scann": phase_scann, "faiss": phase_faiss}


def run_phase(name: str, argv: list[str]) -> dict:
    t0 = time.time()
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--phase", name], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"{name}: done in {time.time() - t0:.0f}s, peak RSS {result['peak_rss_gib']:.1f} GiB", flush=True)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=2560)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--data", choices=("clustered", "iid"), default="clustered")
    p.add_argument("--spread", type=float, default=2.0, help="document noise norm around its unit centre")
    p.add_argument("--query-noise", type=float, default=1.5, help="query noise norm around its source document")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--leaves", type=int, nargs="+", default=[5, 10, 20, 50, 100, 200])
    p.add_argument("--nprobe", type=int, nargs="+", default=[1, 5, 10, 20, 50, 100, 200])
    p.add_argument("--skip-faiss", action="store_true")
    p.add_argument("--workdir", default=None, help="where the data and reference live (default /tmp/bench_search_*)")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.workdir = args.workdir or f"/tmp/bench_search_{args.data}_{args.n}x{args.dim}"
    if args.phase:  # inside a subprocess: run one system, print its JSON as the last line
        result = PHASES[args.phase](args)
        result["peak_rss_gib"] = peak_rss_gib()
        print(json.dumps(result))
        return

    argv = [a for a in sys.argv[1:]]
    if "--workdir" not in argv:
        argv += ["--workdir", args.workdir]
    print(f"# search benchmark: {args.data} unit vectors, n={args.n:,} x d={args.dim}, {args.queries} queries, "
          f"k={args.k}, spread={args.spread}, query noise={args.query_noise}; {os.cpu_count()} CPU cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM", flush=True)
    t_all = time.time()
    write_data(args)
    exact = run_phase("exact", argv)
    scann = run_phase("scann", argv)
    faiss_result = {"rows": []} if args.skip_faiss else run_phase("faiss", argv)

    st = scann["settings"]
    print(f"\nexact: {exact['platform']}, JAX {exact['jax']}. ScaNN defaults at this size: mode={st['mode']} "
          f"leaves={st['num_leaves']} leaves_to_search={st['num_leaves_to_search']} reorder_k={st['reorder_k']}")
    if scann["tuning"]:
        trials = ", ".join(f"({a}, {b}) -> {c:.3f}" for a, b, c in scann["tuning"]["trials"])
        print(f"build-time tuning (leaves, reorder) -> recall@10 on sampled documents: {trials} "
              f"[{scann['tuning']['seconds']:.0f}s]")
    print("\n| system | setting | build s | queries/s | recall@10 | peak RSS GiB |")
    print("|---|---|---:|---:|---:|---:|")
    for result in (exact, scann, faiss_result):
        for system, setting, build, qps, rec in result["rows"]:
            rss = result.get("peak_rss_gib", 0)
            print(f"| {system} | {setting} | {build:.1f} | {qps:,.1f} | {rec:.3f} | {rss:.1f} |")
    print()

    def best_at(rows, recall):
        hits = [r for r in rows if r[4] >= recall]
        return max(hits, key=lambda r: r[3]) if hits else None

    qps_exact = exact["qps"]
    d = scann["default"]
    print(f"ScaNN default (tuned): recall@10 {d[4]:.3f}, {d[3] / qps_exact:.1f}x exact queries/s "
          f"(target: recall >= {args.target} and >= 10x)")
    for recall in (args.target, 0.99):  # each system at its fastest setting that reaches the recall
        best_scann, best_faiss = best_at(scann["rows"], recall), best_at(faiss_result["rows"], recall)
        if best_scann:
            print(f"recall >= {recall}: ScaNN best {best_scann[3]:,.1f} q/s ({best_scann[1]}, recall "
                  f"{best_scann[4]:.3f}) = {best_scann[3] / qps_exact:.1f}x exact", end="")
            if best_faiss:
                print(f"; faiss best {best_faiss[3]:,.1f} q/s ({best_faiss[1]}, recall {best_faiss[4]:.3f}); "
                      f"ScaNN/faiss {best_scann[3] / best_faiss[3]:.2f}x")
            else:
                print("; faiss never reached it" if faiss_result["rows"] else "")
    print(f"total wall time {time.time() - t_all:.0f}s")


if __name__ == "__main__":
    main()
