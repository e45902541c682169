"""grain pipeline for the contrastive stages: shuffle, repeat, per-host shard, select, tokenize, bucket, batch.

Every host walks the same global order (shuffle, repeat and per-example selection are seeded and independent of the
number of hosts), groups it into global batches, and collates only its own rows of each global batch: by default host
h of H takes rows ``[h * b, (h + 1) * b)``; the trainer passes the rows its devices hold in the global array
(:func:`t1_jax.mesh.process_batch_rows`). So a run on 2 hosts sees exactly the global batches of a run on 1 host, and
the trainer turns the host-local numpy batches into global arrays with ``jax.make_array_from_process_local_data``.
The returned iterator is a grain ``DatasetIterator``, so its position is saved in every checkpoint and a resumed run
sees the same batches.

Batch layout: :mod:`t1_jax.data.batch_spec` (``contrastive_spec``); every collated batch is checked against it.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import grain
import jax
import numpy as np

from t1_jax.data.batch_spec import QUERY_KINDS, check_batch, contrastive_spec, training_length
from t1_jax.data.examples import TrainExample, doc_key
from t1_jax.text import T1Formatter


@dataclasses.dataclass(frozen=True)
class _Selected:
    example: TrainExample
    positive: str
    negatives: tuple[Optional[str], ...]  # None = padding slot


def _select(num_negatives: int):
    def select(example: TrainExample, rng: np.random.Generator) -> _Selected:
        positive = example.positives[rng.integers(len(example.positives))]
        pool = list(example.negatives)
        if len(pool) > num_negatives:
            pool = [pool[i] for i in rng.choice(len(pool), size=num_negatives, replace=False)]
        negatives = tuple(pool) + (None,) * (num_negatives - len(pool))
        return _Selected(example, positive, negatives)

    return select


class Collate:
    """Tokenise a list of selected examples with the T1 formats and pad to the bucket lengths."""

    def __init__(self, formatter: T1Formatter, query_kind: str, num_negatives: int, max_positives: int,
                 buckets: Sequence[int] = (), fixed_lengths: Optional[tuple[int, int]] = None):
        if query_kind not in QUERY_KINDS:
            raise ValueError(f"query kind {query_kind!r}; one of {tuple(QUERY_KINDS)}")
        self.formatter = formatter
        self.query_kind = query_kind
        self.num_negatives = num_negatives
        self.max_positives = max_positives
        self.buckets = tuple(buckets)
        self.fixed_lengths = fixed_lengths  # multi-host: every host must produce the same shapes

    def _pad(self, encoded, length):
        ids = np.full((len(encoded), length), self.formatter.pad_token_id, np.int32)
        valid = np.zeros((len(encoded), length), np.int32)
        loss = np.zeros((len(encoded), length), np.int32)
        for i, e in enumerate(encoded):
            if e is None:  # a padding slot: one pad token, so attention has a key (its loss column is masked)
                valid[i, 0] = 1
                continue
            ids[i, :len(e.ids)] = e.ids
            valid[i, :len(e.ids)] = 1
            if e.loss_mask is not None:
                loss[i, :len(e.ids)] = e.loss_mask
        return ids, valid, loss

    def __call__(self, selected: Sequence[_Selected]) -> dict[str, np.ndarray]:
        fmt = self.formatter
        examples = [s.example for s in selected]
        domains = [e.domain for e in examples]
        if self.query_kind == "query_with_reasoning":
            rows = [(e.query, e.reasoning or "") for e in examples]
        else:
            rows = [e.query for e in examples]
        queries = fmt.encode_many(self.query_kind, rows, domains)
        doc_texts, doc_domains = [], []
        for s in selected:
            for text in (s.positive, *s.negatives):
                doc_texts.append(text)
                doc_domains.append(s.example.domain)
        real = [i for i, t in enumerate(doc_texts) if t is not None]
        encoded_real = fmt.encode_many("document", [doc_texts[i] for i in real], [doc_domains[i] for i in real])
        docs = [None] * len(doc_texts)
        for i, e in zip(real, encoded_real):
            docs[i] = e
        if self.fixed_lengths:
            tq, td = self.fixed_lengths
        else:
            tq = training_length(max(len(q) for q in queries), self.buckets)
            td = training_length(max(len(d) for d in encoded_real), self.buckets)
        q_ids, q_valid, q_loss = self._pad(queries, tq)
        d_ids, d_valid, _ = self._pad(docs, td)
        per = 1 + self.num_negatives
        doc_keys = np.array([doc_key(t) if t is not None else -1 for t in doc_texts], np.int32)
        pos_keys = np.full((len(selected), self.max_positives), -1, np.int32)
        for i, e in enumerate(examples):
            keys = [doc_key(p) for p in e.positives[:self.max_positives]]
            pos_keys[i, :len(keys)] = keys
            if doc_keys[i * per] not in keys:  # the sampled positive is always among the remembered ones
                pos_keys[i, -1] = doc_keys[i * per]
        batch = {"q_ids": q_ids, "q_valid": q_valid, "q_loss": q_loss, "d_ids": d_ids, "d_valid": d_valid,
                 "doc_keys": doc_keys, "pos_col": (np.arange(len(selected)) * per).astype(np.int32),
                 "pos_keys": pos_keys}
        check_batch(batch, contrastive_spec(len(selected), per, self.max_positives, tq, td))
        return batch


def max_lengths(formatter: T1Formatter, query_kind: str, domains: Sequence[Optional[str]]) -> tuple[int, int]:
    """Longest possible (query, document) encodings: measured by encoding over-long dummy texts, which truncate."""
    long = "x " * 200_000
    domains = list(dict.fromkeys(domains)) or [None]
    row = (long, long) if query_kind == "query_with_reasoning" else long
    q = fmt_len(formatter, query_kind, [row] * len(domains), domains)
    d = fmt_len(formatter, "document", [long] * len(domains), domains)
    return training_length(q, ()), training_length(d, ())


def fmt_len(formatter, kind, rows, domains) -> int:
    return max(len(e) for e in formatter.encode_many(kind, rows, domains))


class _HostRows:
    """grain batch_fn: collate only this host's rows of a global batch."""

    def __init__(self, collate: Collate, rows: Sequence[int]):
        self.collate = collate
        self.rows = tuple(int(r) for r in rows)

    def __call__(self, selected: Sequence[_Selected]) -> dict[str, np.ndarray]:
        return self.collate([selected[r] for r in self.rows])


def contrastive_batches(examples: Sequence[TrainExample], formatter: T1Formatter, data_cfg, local_batch_size: int,
                        with_reasoning: bool = False, query_kind: Optional[str] = None,
                        host_rows: Optional[Sequence[int]] = None) -> grain.DatasetIterator:
    """The checkpointable iterator of host-local batches (see the module docstring for the layout).

    ``query_kind`` (default: ``query_with_reasoning`` if ``with_reasoning`` else ``query_direct``) picks the query
    format; GRPO uses ``query_prompt``. ``host_rows`` are the rows of each global batch (``data.global_batch_size``)
    that this host collates; by default the global batch is ``local_batch_size x process_count`` and the host takes
    its contiguous block.
    """
    query_kind = query_kind or ("query_with_reasoning" if with_reasoning else "query_direct")
    if local_batch_size <= 0:
        raise ValueError(f"local batch size must be positive, got {local_batch_size}")
    process, processes = jax.process_index(), jax.process_count()
    global_batch = local_batch_size * processes if host_rows is None else data_cfg.global_batch_size
    if host_rows is None:
        host_rows = range(process * local_batch_size, (process + 1) * local_batch_size)
    host_rows = list(host_rows)
    if len(host_rows) != local_batch_size or not all(0 <= r < global_batch for r in host_rows):
        raise ValueError(f"host rows {host_rows} are not {local_batch_size} rows of a global batch of {global_batch}")
    ds = grain.MapDataset.source(list(examples))
    if len(ds) < global_batch:
        raise ValueError(f"{len(ds)} training examples cannot fill a global batch of {global_batch}")
    if data_cfg.shuffle:
        ds = ds.shuffle(seed=data_cfg.seed)
    ds = ds.repeat(data_cfg.num_epochs or None)
    ds = ds.random_map(_select(data_cfg.num_hard_negatives), seed=data_cfg.seed + 1)
    fixed = None
    if processes > 1:  # every host must build arrays of the same global shape: pad to the longest possible
        longest = max_lengths(formatter, query_kind, [e.domain for e in examples])
        fixed = tuple(training_length(n, data_cfg.length_buckets) for n in longest)
    collate = Collate(formatter, query_kind, data_cfg.num_hard_negatives, data_cfg.max_positives,
                      data_cfg.length_buckets, fixed)
    ds = ds.batch(global_batch, drop_remainder=True,
                  batch_fn=collate if host_rows == list(range(global_batch)) else _HostRows(collate, host_rows))
    read = grain.ReadOptions(num_threads=max(1, data_cfg.worker_count), prefetch_buffer_size=max(1, data_cfg.prefetch))
    return iter(ds.to_iter_dataset(read))
