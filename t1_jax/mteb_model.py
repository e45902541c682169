"""A T1 checkpoint as an mteb (2.x) model: ``mteb.evaluate(T1MtebModel("runs/quickstart/stage2"), tasks)``.

mteb calls ``encode(dataloader, task_metadata=..., prompt_type=...)`` once for the corpus and once for the queries of
a task (its ``SearchEncoderWrapper`` then scores them with :meth:`similarity` and ranks). Here documents go through
one forward pass (``Encoder.encode_documents``), queries through generation: the model writes its reasoning, then the
embedding is read at ``<embtoken>`` (``Encoder.encode_queries``; ``reasoning=False`` gives the direct, stage-1 style
query). For mteb's BRIGHT tasks (``Bright<Domain>Retrieval``, ``Bright<Domain>LongRetrieval``) the domain's query and
document instructions come from the same table as ``t1 eval`` and ``t1 search --domain`` (``t1_jax.text``); other
tasks use the default instructions (``text.query_instruction`` / ``text.doc_instruction``), not mteb's prompts,
because the model was trained with ours. Each query's reasoning is kept in ``reasoning[task name]`` (query text ->
reasoning) for inspection.

Needs the ``mteb`` extra (``pip install -e ".[mteb]"``); nothing else in t1_jax imports mteb.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

# mteb's BRIGHT task names -> our domain names (the instruction table's keys)
_BRIGHT_TASK = re.compile(r"^Bright(?P<domain>.+?)(?P<long>Long)?Retrieval$")
MTEB_BRIGHT_DOMAINS = {"Biology": "biology", "EarthScience": "earth-science", "Economics": "economics",
                       "Psychology": "psychology", "Robotics": "robotics", "Stackoverflow": "stackoverflow",
                       "SustainableLiving": "sustainable-living", "Pony": "pony", "Leetcode": "leetcode",
                       "Aops": "aops", "TheoremQATheorems": "theoremqa-theorems",
                       "TheoremQAQuestions": "theoremqa-questions"}


def bright_domain(task_name: str) -> Optional[str]:
    """``BrightEarthScienceLongRetrieval`` -> ``earth-science``; None for a task outside BRIGHT."""
    m = _BRIGHT_TASK.match(task_name or "")
    return MTEB_BRIGHT_DOMAINS.get(m.group("domain")) if m else None


class T1MtebModel(AbsEncoder):
    """mteb's ``EncoderProtocol`` over :class:`t1_jax.encoder.Encoder` (see the module doc).

    ``model_name``: a T1 model folder or ``t1 train`` workdir (what ``t1 eval --checkpoint`` takes); or pass a loaded
    ``encoder``. ``reasoning``: generate reasoning for queries (default) or embed them directly. ``seed``: sampling
    seed when the decoding is not greedy.
    """

    def __init__(self, model_name: Optional[str] = None, revision: Optional[str] = None, *,
                 device: Optional[str] = None, encoder=None, reasoning: bool = True, seed: int = 0,
                 name: Optional[str] = None, **encoder_kwargs: Any):
        if encoder is None:
            if not model_name:
                raise ValueError("T1MtebModel needs a checkpoint folder (model_name) or an encoder")
            from t1_jax.encoder import Encoder

            encoder = Encoder.from_checkpoint(model_name, **encoder_kwargs)
        self.model = self.encoder = encoder
        self.reasoning, self.seed = reasoning, seed
        self.reasoning_by_task: dict[str, dict[str, str]] = {}
        label = name or (model_name or "t1").rstrip("/").split("/")[-1] or "t1"
        self.mteb_model_meta = ModelMeta(
            loader=None, name=f"t1-jax/{label}" + ("" if reasoning else "-no-reasoning"),
            revision=encoder.fingerprint or None, release_date=None, languages=None, n_parameters=None,
            memory_usage_mb=None, max_tokens=None, embed_dim=encoder.dim, license=None, open_weights=True,
            public_training_code=None, public_training_data=None, framework=["JAX"],
            similarity_fn_name=ScoringFunction.DOT_PRODUCT if encoder.normalize else ScoringFunction.COSINE,
            use_instructions=True, training_datasets=None)

    @property
    def reasoning_log(self) -> dict[str, dict[str, str]]:
        """task name -> {query text: generated reasoning}."""
        return self.reasoning_by_task

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str,
               prompt_type: Optional[PromptType] = None, **kwargs: Any) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        domain = bright_domain(task_metadata.name)
        domains = [domain] * len(texts)
        if prompt_type == PromptType.query:
            emb, reasoning, _ = self.encoder.encode_queries(texts, domains, reasoning=self.reasoning, seed=self.seed)
            self.reasoning_by_task.setdefault(task_metadata.name, {}).update(zip(texts, reasoning))
        else:
            emb = self.encoder.encode_documents(texts, domains)
            if self.encoder.normalize:  # as the embedding store keeps them (t1 eval)
                emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return np.asarray(emb, np.float32)


def beir_task(directory: str, split: str = "test", name: Optional[str] = None):
    """A local BEIR folder (the layout ``t1 eval --beir`` reads) as an mteb retrieval task, loaded from disk only:
    ``mteb.evaluate(model, beir_task("../shared/data/scifact"))`` runs offline."""
    import os

    from datasets import Dataset as HFDataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    from t1_jax.data import readers

    label = name or "".join(p.capitalize() for p in re.split(r"[^A-Za-z0-9]+",
                                                               os.path.basename(os.path.normpath(directory))) if p)
    metadata = TaskMetadata(
        name=f"Local{label}Retrieval", description=f"The BEIR folder {directory} ({split} split), read from disk.",
        reference=None, dataset={"path": str(directory), "revision": "local"}, type="Retrieval", category="t2t",
        eval_splits=[split], eval_langs=["eng-Latn"], main_score="ndcg_at_10", date=None, domains=None,
        task_subtypes=None, license=None, annotations_creators=None, dialect=None, sample_creation=None,
        modalities=["text"], bibtex_citation=None)

    class LocalBeirRetrieval(AbsTaskRetrieval):
        def load_data(self, num_proc: Optional[int] = None, **kwargs: Any) -> None:
            if self.data_loaded:
                return
            data = readers.load_beir(directory, split)
            corpus = HFDataset.from_list([{"id": d, "title": doc["title"], "text": doc["text"]}
                                          for d, doc in data.corpus.items()])
            queries = HFDataset.from_list([{"id": q, "text": t} for q, t in data.queries.items()])
            self.dataset = {"default": {split: RetrievalSplitData(queries=queries, corpus=corpus,
                                                                   relevant_docs=data.qrels, top_ranked=None)}}
            self.data_loaded = True

    LocalBeirRetrieval.metadata = metadata
    return LocalBeirRetrieval()
