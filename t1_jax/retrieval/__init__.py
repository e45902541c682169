"""Retrieval: embedding store, ScaNN and exact search, IR metrics, TREC IO, BM25 and BEIR/BRIGHT evaluation."""
