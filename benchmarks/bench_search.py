"""Search benchmark: ScaNN (our defaults) vs exact search (jitted JAX) vs faiss-cpu IVF-flat, in one run.

For each system: build time, queries/s and recall@10 against exact search, over a sweep of the knob that trades speed
for recall (ScaNN leaves searched, faiss nprobe). Then the ratio lines: ScaNN queries/s over exact, and over faiss at
the first setting of each that reaches the target recall.

Data: unit vectors in ``--dim`` dimensions. ``--data clustered`` (default) draws them around ``--clusters`` random
unit centres (noise of norm ``--spread`` around a centre: overlapping clusters), which gives neighbourhoods the way
real embeddings have them; ``--data iid`` draws them uniformly,
where every point is nearly equidistant from every other and no partitioned index can beat a full scan by much (kept
as a stress case). Queries are documents plus noise.

    python benchmarks/bench_search.py                       # 100k x 2560, 1000 queries (about 1 GB per copy)
    python benchmarks/bench_search.py --n 20000 --dim 256   # quick
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402


def unit_rows(x):
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(n, d, nq, clusters, kind, spread, query_noise, seed=0):
    rng = np.random.default_rng(seed)
    docs = np.empty((n, d), np.float32)
    centres = unit_rows(rng.standard_normal((clusters, d), dtype=np.float32)) if kind == "clustered" else None
    for start in range(0, n, 10_000):  # in blocks: float32 throughout, no float64 copy of the corpus
        stop = min(start + 10_000, n)
        noise = rng.standard_normal((stop - start, d), dtype=np.float32)
        if kind == "clustered":
            noise = centres[rng.integers(0, clusters, stop - start)] + noise * np.float32(spread / np.sqrt(d))
        docs[start:stop] = unit_rows(noise)
    src = docs[rng.integers(0, n, nq)]
    queries = unit_rows(src + rng.standard_normal((nq, d), dtype=np.float32) * np.float32(query_noise / np.sqrt(d)))
    return docs, queries


def recall_at(rows, ref):
    k = ref.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(rows, ref)]))


def timed(fn, repeats=1):
    best = float("inf")
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=2560)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--data", choices=("clustered", "iid"), default="clustered")
    p.add_argument("--spread", type=float, default=2.0, help="document noise norm around its unit centre")
    p.add_argument("--query-noise", type=float, default=1.5, help="query noise norm around its source document")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--leaves", type=int, nargs="+", default=[1, 5, 10, 20, 40, 80])
    p.add_argument("--nprobe", type=int, nargs="+", default=[1, 5, 10, 20, 40, 80])
    p.add_argument("--skip-faiss", action="store_true")
    args = p.parse_args()

    import jax

    from t1_jax.retrieval.exact import ExactIndex
    from t1_jax.retrieval.index import IndexSettings, build_index

    print(f"# search benchmark: {args.data} unit vectors, n={args.n} x d={args.dim}, {args.queries} queries, "
          f"k={args.k}, spread={args.spread}, query noise={args.query_noise}; {os.cpu_count()} CPU cores, "
          f"JAX {jax.__version__} on {jax.devices()[0].platform}")
    docs, queries = make_data(args.n, args.dim, args.queries, args.clusters, args.data, args.spread,
                              args.query_noise)
    print(f"data: {docs.nbytes / 2**30:.2f} GiB per float32 copy of the corpus")
    rows = []  # (system, setting, build_s, qps, recall)

    # exact (the reference): docs placed once, queries in blocks of 256, jitted matmul + top-k
    (exact, build_exact) = timed(lambda: ExactIndex(docs, query_block=256))
    exact.search_indices(queries[:256], args.k)  # compile
    (ref_scores, ref), t = timed(lambda: exact.search_indices(queries, args.k), repeats=2)
    rows.append(("exact (JAX)", "-", build_exact, args.queries / t, 1.0))
    qps_exact = args.queries / t
    del exact

    # ScaNN with the defaults t1 index picks at this size, then a sweep of leaves searched
    index, build_s = timed(lambda: build_index(docs, [str(i) for i in range(args.n)],
                                               settings=IndexSettings(num_neighbors=args.k)))
    s = index.settings
    print(f"ScaNN defaults: mode={s.mode} leaves={s.num_leaves} search={s.num_leaves_to_search} "
          f"reorder={s.reorder_k} (build {build_s:.1f}s)")
    scann_rows = []
    for leaves in sorted(set(args.leaves + [s.num_leaves_to_search])):
        if leaves > s.num_leaves:
            continue
        index.search_indices(queries[:10], args.k, leaves_to_search=leaves)
        (_, got), t = timed(lambda: index.search_indices(queries, args.k, leaves_to_search=leaves), repeats=2)
        tag = f"leaves={leaves}" + (" (default)" if leaves == s.num_leaves_to_search else "")
        scann_rows.append((leaves, args.queries / t, recall_at(got, ref)))
        rows.append(("ScaNN tree-AH+reorder", tag, build_s, args.queries / t, scann_rows[-1][2]))
    del index

    faiss_rows = []
    if not args.skip_faiss:
        import faiss

        nlist = int(round(np.sqrt(args.n)))

        def build_faiss():
            quantizer = faiss.IndexFlatIP(args.dim)
            ivf = faiss.IndexIVFFlat(quantizer, args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.cp.spherical = True  # unit-norm data, inner product: the same k-means flavour ScaNN's tree uses
            ivf.train(docs[np.random.default_rng(1).choice(args.n, min(args.n, 100 * nlist), replace=False)])
            ivf.add(docs)
            return ivf

        ivf, fbuild = timed(build_faiss)
        for nprobe in args.nprobe:
            if nprobe > nlist:
                continue
            ivf.nprobe = nprobe
            (_, got), t = timed(lambda: ivf.search(queries, args.k), repeats=2)
            faiss_rows.append((nprobe, args.queries / t, recall_at(got, ref)))
            rows.append((f"faiss IVF-flat (nlist={nlist}, spherical)", f"nprobe={nprobe}", fbuild, args.queries / t,
                         faiss_rows[-1][2]))
        del ivf

    print()
    print("| system | setting | build s | queries/s | recall@10 |")
    print("|---|---|---:|---:|---:|")
    for system, setting, build, qps, rec in rows:
        print(f"| {system} | {setting} | {build:.1f} | {qps:,.0f} | {rec:.3f} |")
    print()

    def first_at_target(table):
        hits = [r for r in table if r[2] >= args.target]
        return max(hits, key=lambda r: r[1]) if hits else None

    best_scann = first_at_target(scann_rows)
    default_scann = next(r for r in scann_rows if r[0] == s.num_leaves_to_search)
    print(f"ScaNN default: recall@10 {default_scann[2]:.3f}, {default_scann[1] / qps_exact:.1f}x exact queries/s "
          f"(target: recall >= {args.target} and >= 10x)")
    if best_scann:
        print(f"ratio ScaNN/exact at recall >= {args.target}: {best_scann[1] / qps_exact:.1f}x "
              f"(leaves={best_scann[0]}, recall {best_scann[2]:.3f})")
    else:
        print(f"ScaNN never reached recall {args.target} in the sweep")
    best_faiss = first_at_target(faiss_rows)
    if best_scann and best_faiss:
        print(f"ratio ScaNN/faiss at recall >= {args.target}: {best_scann[1] / best_faiss[1]:.2f}x "
              f"(faiss nprobe={best_faiss[0]}, recall {best_faiss[2]:.3f}, {best_faiss[1]:,.0f} q/s)")
    elif faiss_rows:
        print(f"faiss never reached recall {args.target} in the sweep")
    import resource

    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")


if __name__ == "__main__":
    main()
