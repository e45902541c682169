"""Data readers (jsonl, BEIR, BRIGHT, qrels, documents) and training input pipelines."""
