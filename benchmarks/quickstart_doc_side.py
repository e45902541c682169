"""Does stage 3 move the document side? Cross-evaluate a finished quickstart workdir.

Stage 3 (GRPO) trains the shared weights through the query side only (documents are embedded under stop_gradient),
so the documents' embeddings can drift while nothing anchors them. This script scores the held-out queries with each
pair (query encoder, document encoder) from {stage 2, stage 3}: if stage-3 queries against stage-2 documents retrieve
as well as against stage-3 documents, the document side did not drift in a way that matters.

    python benchmarks/quickstart_doc_side.py --workdir runs/quickstart

Prints nDCG@10 for the four pairs (exact dot-product search over the whole corpus, pytrec_eval-style metrics from
t1_jax.retrieval.metrics). Numbers in docs/design-choices.md ("Documents in stage 3").
"""
from __future__ import annotations

import argparse
import os

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a finished `t1 quickstart` workdir")
    args = parser.parse_args()

    from t1_jax.data.readers import beir_document_text, load_beir
    from t1_jax.encoder import Encoder
    from t1_jax.retrieval.metrics import evaluate_run

    data = load_beir(os.path.join(args.workdir, "task", "beir"), "test")
    doc_ids = list(data.corpus)
    qids = list(data.queries)
    docs, queries = {}, {}
    for stage in ("stage2", "stage3"):
        encoder = Encoder.from_checkpoint(os.path.join(args.workdir, stage), batch_size=64, show_progress=False)
        docs[stage] = encoder.encode_documents([beir_document_text(data.corpus[d]) for d in doc_ids])
        queries[stage] = encoder.encode_queries([data.queries[q] for q in qids])[0]  # greedy reasoning
    print(f"{'queries from':<14}{'documents from':<16}{'nDCG@10':>8}")
    for q_stage in ("stage2", "stage3"):
        for d_stage in ("stage2", "stage3"):
            scores_qn = queries[q_stage] @ docs[d_stage].T
            top_qk = np.argsort(-scores_qn, axis=1)[:, :100]
            run = {q: {doc_ids[j]: float(scores_qn[i, j]) for j in top_qk[i]} for i, q in enumerate(qids)}
            print(f"{q_stage:<14}{d_stage:<16}{evaluate_run(run, data.qrels, ks=(10,))['nDCG@10']:>8.4f}")


if __name__ == "__main__":
    main()
