"""The sections of an experiment config: one frozen dataclass per concern, each validating itself.

Every default that is a modelling choice (the T1 report publishes none) is listed in ``docs/design-choices.md``.
Loading, overrides and serialisation live in ``t1_jax.config``, which re-exports everything here. The sections of
sampling, GRPO, retrieval and evaluation live in ``t1_jax.config_sections_inference``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from t1_jax.config_sections_inference import EvalConfig, GRPOConfig, RetrievalConfig, SamplingConfig


class ConfigError(ValueError):
    """A configuration problem, phrased as one line a user can act on."""


# --------------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------------


ATTENTION_IMPLS = ("xla", "splash")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Qwen3 decoder shape and numerics. Defaults are a tiny test model; presets live in ``t1_jax.model.presets``."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = True
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: str = "none"  # none | full | dots (see t1_jax.model.qwen3.REMAT_POLICIES)
    scan_layers: bool = True
    # Full-sequence attention (training, log-probs, encoding, prefill): xla (materialised scores) | splash (the Pallas
    # TPU kernel; interpret mode off TPU). Decode steps always use xla. docs/model.md, "Attention implementations".
    attention_impl: str = "xla"
    splash_block_q: int = 0  # splash tile sizes (multiples of 128); 0 = chosen per length (t1_jax.model.splash)
    splash_block_kv: int = 0
    emb_token_id: Optional[int] = None  # id of <embtoken>; set when the tokenizer is extended
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0

    def validate(self) -> list[str]:
        errors = []
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                errors.append(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads:
            errors.append(f"model.num_heads ({self.num_heads}) must be a multiple of model.num_kv_heads "
                          f"({self.num_kv_heads})")
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in _DTYPES:
                errors.append(f"model.{name} must be one of {sorted(_DTYPES)}, got {getattr(self, name)!r}")
        if self.remat not in ("none", "full", "dots"):
            errors.append(f"model.remat must be one of none, full, dots; got {self.remat!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            errors.append(f"model.attention_impl must be one of {', '.join(ATTENTION_IMPLS)}; got "
                          f"{self.attention_impl!r}")
        for name in ("splash_block_q", "splash_block_kv"):
            if getattr(self, name) < 0 or getattr(self, name) % 128:
                errors.append(f"model.{name} must be 0 (chosen per length) or a positive multiple of 128, got "
                              f"{getattr(self, name)}")
        if self.emb_token_id is not None and not 0 <= self.emb_token_id < self.vocab_size:
            errors.append(f"model.emb_token_id {self.emb_token_id} is outside the vocabulary (size {self.vocab_size})")
        if self.rms_norm_eps <= 0:
            errors.append(f"model.rms_norm_eps must be positive, got {self.rms_norm_eps}")
        return errors

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """Analytic FLOPs per token in sequences of ``seq_len`` tokens, LM head excluded (the config owns its cost,
        as levanter's does): :func:`t1_jax.model.counts.decoder_flops` of one token, with ``remat``'s recompute."""
        from t1_jax.model.counts import decoder_flops

        return decoder_flops(self, tokens=1, seq_len=seq_len, training=training).total


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh ``(data, fsdp, tensor)``; -1 on one axis means "all remaining devices"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # Multi-host: left empty, ``jax.distributed.initialize`` auto-detects on TPU pods.
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1

    def validate(self) -> list[str]:
        errors = []
        sizes = (self.data, self.fsdp, self.tensor)
        if sum(s == -1 for s in sizes) > 1:
            errors.append("mesh: at most one of data/fsdp/tensor may be -1")
        for name, size in zip(("data", "fsdp", "tensor"), sizes):
            if size == 0 or size < -1:
                errors.append(f"mesh.{name} must be a positive size or -1, got {size}")
        return errors

    def resolve(self, device_count: int) -> tuple[int, int, int]:
        """Concrete (data, fsdp, tensor) sizes for ``device_count`` devices, or ConfigError."""
        sizes = [self.data, self.fsdp, self.tensor]
        fixed = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if fixed <= 0 or device_count % fixed:
                raise ConfigError(f"mesh {self.data}x{self.fsdp}x{self.tensor} (data x fsdp x tensor) does not divide "
                                  f"{device_count} devices")
            sizes[sizes.index(-1)] = device_count // fixed
        elif fixed != device_count:
            raise ConfigError(f"mesh {self.data}x{self.fsdp}x{self.tensor} (data x fsdp x tensor) uses {fixed} devices "
                              f"but {device_count} are available")
        return tuple(sizes)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Tokenizer and the T1 prompt formats (templates live in ``t1_jax.text``)."""

    tokenizer: str = ""  # a folder with tokenizer.json (or a hub id when online)
    emb_token: str = "<embtoken>"
    query_instruction: str = "Given a question, reason about what a helpful document contains, then embed it."
    doc_instruction: str = "Represent this document for retrieval."
    domain_instructions: bool = True  # per-domain instructions for BRIGHT's domains
    use_chat_template: bool = True
    max_query_tokens: int = 256  # the whole query prompt (template + query text), reasoning not included
    max_doc_tokens: int = 512  # the whole document sequence, <embtoken> included
    max_reasoning_tokens: int = 256
    # Templates: {instruction} and {text} / {query} are filled in; see t1_jax.text and docs/text.md.
    doc_template: str = "{instruction}\n{text}"
    query_template: str = "{instruction}\nQuery: {query}"  # the user message (chat) or the plain prompt
    direct_query_format: str = "chat"  # stage-1 query without reasoning: chat (prompt + <embtoken>) | plain
    # (domain, instruction) pairs that replace or extend the built-in per-domain tables in t1_jax.text
    query_domain_instructions: tuple[tuple[str, str], ...] = ()
    doc_domain_instructions: tuple[tuple[str, str], ...] = ()
    stop_tokens: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")  # end-of-sequence tokens besides tokenizer.eos

    def validate(self) -> list[str]:
        errors = [f"text.{n} must be positive, got {getattr(self, n)}"
                  for n in ("max_query_tokens", "max_doc_tokens", "max_reasoning_tokens") if getattr(self, n) <= 0]
        if not self.emb_token:
            errors.append("text.emb_token must be a non-empty token string such as <embtoken>")
        for name, field in (("doc_template", "{text}"), ("query_template", "{query}")):
            template = getattr(self, name)
            if template.count(field) != 1:
                errors.append(f"text.{name} must contain {field} exactly once, got {template!r}")
            try:
                template.format(instruction="", text="", query="")
            except (KeyError, IndexError, ValueError) as e:
                errors.append(f"text.{name}: only {{instruction}} and {field} may appear in braces ({e!r})")
        if self.direct_query_format not in ("chat", "plain"):
            errors.append(f"text.direct_query_format must be chat or plain, got {self.direct_query_format!r}")
        for name in ("query_domain_instructions", "doc_domain_instructions"):
            for pair in getattr(self, name):
                if not pair[0].strip():
                    errors.append(f"text.{name}: empty domain name in {pair!r}")
        if any(not t for t in self.stop_tokens):
            errors.append(f"text.stop_tokens must not contain empty strings, got {self.stop_tokens!r}")
        return errors


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training data (grain). ``format``: jsonl (one example per line) or beir (corpus + queries + qrels)."""

    train_path: str = ""
    format: str = "jsonl"
    corpus_path: str = ""  # jsonl positives/negatives given as document ids: the BEIR corpus.jsonl that holds them
    beir_split: str = "train"
    global_batch_size: int = 8
    num_hard_negatives: int = 1
    max_positives: int = 4  # positives per query remembered for duplicate masking
    seed: int = 0
    shuffle: bool = True
    num_epochs: int = 0  # 0 = repeat forever
    length_buckets: tuple[int, ...] = ()  # padded lengths; empty = one bucket at the max length
    prefetch: int = 2
    worker_count: int = 0
    # Stage 2: train on teacher traces longer than text.max_reasoning_tokens, cut there (default: skip those examples)
    keep_cut_reasoning: bool = False

    def validate(self) -> list[str]:
        errors = []
        if self.format not in ("jsonl", "beir"):
            errors.append(f"data.format must be jsonl or beir, got {self.format!r}")
        if self.global_batch_size <= 0:
            errors.append(f"data.global_batch_size must be positive, got {self.global_batch_size}")
        if self.num_hard_negatives < 0:
            errors.append(f"data.num_hard_negatives must be >= 0, got {self.num_hard_negatives}")
        if self.max_positives < 1:
            errors.append(f"data.max_positives must be >= 1, got {self.max_positives}")
        if list(self.length_buckets) != sorted(set(self.length_buckets)) or any(b <= 0 for b in self.length_buckets):
            errors.append(f"data.length_buckets must be increasing positive lengths, got {self.length_buckets}")
        return errors


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup and cosine decay, global-norm clipping, gradient accumulation."""

    lr: float = 1e-4
    end_lr_ratio: float = 0.1
    warmup_steps: int = 10
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    grad_accum_steps: int = 1

    def validate(self) -> list[str]:
        errors = []
        if not self.lr > 0:
            errors.append(f"optimizer.lr must be positive, got {self.lr}")
        if not 0 <= self.end_lr_ratio <= 1:
            errors.append(f"optimizer.end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")
        if self.warmup_steps < 0:
            errors.append(f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            errors.append(f"optimizer.b1/b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if self.weight_decay < 0:
            errors.append(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        if self.clip_norm < 0:
            errors.append(f"optimizer.clip_norm must be >= 0 (0 disables), got {self.clip_norm}")
        if self.grad_accum_steps < 1:
            errors.append(f"optimizer.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        return errors


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig:
    """Stage 1/2 losses: InfoNCE over the gathered global batch, plus stage 2's reasoning cross-entropy."""

    temperature: float = 0.02
    symmetric: bool = False
    mask_duplicates: bool = True
    sft_weight: float = 1.0  # lambda on the reasoning cross-entropy (stage 2)
    ce_chunk_size: int = 128  # sequence chunk for the cross-entropy (never full [B, T, V] logits)
    gradcache_chunk: int = 0  # > 0: GradCache-style chunked embedding/backprop of this many examples

    def validate(self) -> list[str]:
        errors = []
        if not self.temperature > 0:
            errors.append(f"loss.temperature must be positive, got {self.temperature}")
        if self.sft_weight < 0:
            errors.append(f"loss.sft_weight must be >= 0, got {self.sft_weight}")
        if self.ce_chunk_size <= 0:
            errors.append(f"loss.ce_chunk_size must be positive, got {self.ce_chunk_size}")
        if self.gradcache_chunk < 0:
            errors.append(f"loss.gradcache_chunk must be >= 0, got {self.gradcache_chunk}")
        return errors


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """One loop for every stage."""

    stage: str = "contrastive"  # contrastive (stage 1) | reasoning (stage 2) | grpo (stage 3): t1_jax.stages.registry
    num_steps: int = 100
    seed: int = 0
    init_from: str = ""  # an imported HF checkpoint (orbax) or a previous stage's workdir; empty = random init
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    async_checkpointing: bool = True

    def validate(self) -> list[str]:
        from t1_jax.stages.registry import STAGES

        errors = []
        if self.stage not in STAGES:
            errors.append(f"trainer.stage must be one of {', '.join(STAGES)}; got {self.stage!r}")
        for name in ("num_steps", "log_every", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                errors.append(f"trainer.{name} must be positive, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                errors.append(f"trainer.{name} must be >= 0, got {getattr(self, name)}")
        return errors


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    model: ModelConfig = ModelConfig()
    mesh: MeshConfig = MeshConfig()
    text: TextConfig = TextConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    loss: ContrastiveConfig = ContrastiveConfig()
    sampling: SamplingConfig = SamplingConfig()
    grpo: GRPOConfig = GRPOConfig()
    trainer: TrainerConfig = TrainerConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    eval: EvalConfig = EvalConfig()


_DTYPES = {"float32", "bfloat16", "float16"}
