"""BM25 baseline through ``bm25s``, set up to behave like Lucene/Anserini's default English BM25.

Choices (our settings, chosen to reproduce the published Lucene "flat" BEIR numbers):
- scoring: ``bm25s`` method ``lucene`` with k1 = 0.9, b = 0.4 (Anserini's defaults);
- analysis like Lucene's EnglishAnalyzer: lower-casing, possessive ``'s`` stripped, words of one or more letters or
  digits, Lucene's 33 English stop words, the original Porter stemmer (PyStemmer's ``porter``);
- documents are ``title + " " + text`` (BEIR), queries their text.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Sequence

import numpy as np

_POSSESSIVE = re.compile(r"(?<=\w)['\u2019][sS]\b")


@dataclasses.dataclass(frozen=True)
class BM25Settings:
    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    stemmer: str = "porter"  # a PyStemmer algorithm, or "" for none
    stopwords: str = "en"  # bm25s list name ("en" = Lucene's 33 words) or "" for none
    token_pattern: str = r"(?u)\b\w+\b"


def _prepare(texts: Sequence[str]) -> list[str]:
    return [_POSSESSIVE.sub("", t) for t in texts]


def _tokenizer(settings: BM25Settings):
    from bm25s.tokenization import Tokenizer

    stem = None
    if settings.stemmer:
        try:
            import Stemmer
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError("BM25 stemming needs PyStemmer (pip install PyStemmer), or set stemmer=''") from None
        stem = Stemmer.Stemmer(settings.stemmer).stemWord
    return Tokenizer(lower=True, splitter=settings.token_pattern, stopwords=settings.stopwords or [], stemmer=stem)


class BM25Index:
    """A BM25 index over ``(doc_ids, doc_texts)``; :meth:`search` returns the top-k of each query."""

    def __init__(self, doc_ids: Sequence[str], doc_texts: Sequence[str], settings: BM25Settings = BM25Settings()):
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # after its import: its debug lines are noise here
        if len(doc_ids) == 0:
            raise ValueError("BM25: the corpus is empty")
        if len(doc_ids) != len(doc_texts):
            raise ValueError(f"BM25: {len(doc_ids)} ids for {len(doc_texts)} texts")
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError("BM25: duplicate document ids")
        self.doc_ids = np.asarray(list(doc_ids), dtype=object)
        self.settings = settings
        self._tokenizer = _tokenizer(settings)
        tokens = self._tokenizer.tokenize(_prepare(doc_texts), update_vocab=True, return_as="tuple",
                                          show_progress=False)
        self._bm25 = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
        self._bm25.index(tokens, show_progress=False)

    def search(self, query_texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores_br, doc_ids_br)``; k is capped at the corpus size."""
        if len(query_texts) == 0:
            raise ValueError("BM25: the query set is empty")
        k = min(k, len(self.doc_ids))
        tokens = self._tokenizer.tokenize(_prepare(query_texts), update_vocab=False, return_as="tuple",
                                          show_progress=False)
        idx_br, scores_br = self._bm25.retrieve(tokens, k=k, show_progress=False, n_threads=0)
        return np.asarray(scores_br, dtype=np.float64), self.doc_ids[np.asarray(idx_br)]

    def scores(self, query_text: str) -> np.ndarray:
        """float64 ``[E]``: the BM25 score of every document (in index order) for one query."""
        tokens = self._tokenizer.tokenize(_prepare([query_text]), update_vocab=False, return_as="tuple",
                                          show_progress=False)
        unknown = tokens.vocab.get("")  # the id bm25s gives a query with no indexed word
        ids = [int(i) for i in tokens.ids[0] if i != unknown]
        if not ids:
            return np.zeros(len(self.doc_ids), np.float64)
        return np.asarray(self._bm25.get_scores(ids), dtype=np.float64)


def bm25_run(doc_ids: Sequence[str], doc_texts: Sequence[str], query_ids: Sequence[str], query_texts: Sequence[str],
             k: int = 100, settings: BM25Settings = BM25Settings()) -> dict[str, dict[str, float]]:
    """``{qid: {docid: score}}`` of the top-k BM25 documents of each query (zero-score documents dropped)."""
    scores_br, ids_br = BM25Index(doc_ids, doc_texts, settings).search(query_texts, k)
    return {qid: {str(d): float(s) for d, s in zip(ids, scores) if s > 0}
            for qid, ids, scores in zip(query_ids, ids_br, scores_br)}
