"""A small byte-level BPE tokenizer trained on the quickstart task's own text (HF ``tokenizers``).

Digits are always single tokens (so the model sees place values and can learn column arithmetic), every byte is in
the base alphabet (any text encodes and decodes exactly), and the special tokens use Qwen3's names so the T1 formats
are the same as with the real tokenizer: ``<|endoftext|>`` (pad, id 0), ``<|im_start|>``, ``<|im_end|>`` (eos) and
``<embtoken>``. The folder written by :func:`train_tokenizer` loads with ``t1_jax.text.load_tokenizer`` or
``transformers.AutoTokenizer`` and carries a minimal ChatML chat template (the Qwen3-Instruct layout without tools or
thinking blocks).
"""
from __future__ import annotations

import os
from typing import Iterable

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
EMB_TOKEN = "<embtoken>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, EOS_TOKEN, EMB_TOKEN)  # ids 0..3 in this order

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tokenizer_trainer(vocab_size: int, min_frequency: int = 2):
    """An untrained ``tokenizers.Tokenizer`` (byte-level BPE, single digits) and its trainer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    return tokenizer, trainer


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str, min_frequency: int = 2) -> str:
    """Train on ``texts``, save a transformers-loadable folder at ``out_dir`` and return it.

    ``vocab_size`` counts everything (256 bytes + 4 special tokens + merges); it must exceed 260. Training is
    deterministic for the same texts in the same order.
    """
    from transformers import PreTrainedTokenizerFast

    base = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= base:
        raise ValueError(f"vocab_size must exceed {base} (256 bytes + {len(SPECIAL_TOKENS)} special tokens), "
                         f"got {vocab_size}")
    tokenizer, trainer = build_tokenizer_trainer(vocab_size, min_frequency)
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != i:
            raise RuntimeError(f"special token {token} did not get id {i}")
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                      additional_special_tokens=[IM_START, EMB_TOKEN],
                                      clean_up_tokenization_spaces=False, model_max_length=4096)
    wrapped.chat_template = CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    wrapped.save_pretrained(out_dir)
    return out_dir


# Short instructions for the quickstart task (long ones would cost a tiny model most of its sequence length).
QUERY_INSTRUCTION = "Compute, answer in words."
DOC_INSTRUCTION = "A number in words."


def text_config(tokenizer_dir: str, **overrides):
    """The TextConfig the quickstart uses with a tokenizer from :func:`train_tokenizer` (fields overridable)."""
    from t1_jax.config import TextConfig

    fields = dict(tokenizer=tokenizer_dir, query_instruction=QUERY_INSTRUCTION, doc_instruction=DOC_INSTRUCTION,
                  domain_instructions=False, max_query_tokens=64, max_doc_tokens=64, max_reasoning_tokens=96)
    fields.update(overrides)
    return TextConfig(**fields)


def tokenizer_texts(texts: Iterable[str], text_cfg=None, repeats: int = 16) -> Iterable[str]:
    """``texts`` plus the fixed words of the T1 formats (chat roles, instructions, "Query:"), repeated so BPE learns
    them as whole tokens instead of spelling every prompt out letter by letter."""
    yield from texts
    fixed = ["user", "assistant", "Query:"]
    if text_cfg is not None:
        fixed += [text_cfg.query_instruction, text_cfg.doc_instruction]
    for _ in range(repeats):
        yield from fixed
