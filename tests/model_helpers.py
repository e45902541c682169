"""Shared helpers for the model tests: a random transformers Qwen3 saved to disk, padded batches, error metric."""
from __future__ import annotations

import numpy as np


def rel_err(ours, ref) -> float:
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def save_random_hf(directory, *, vocab=512, hidden=64, inter=128, layers=2, heads=4, kv_heads=2, head_dim=16,
                   tied=True, theta=10000.0, seed=0, std=0.02):
    """Random-init transformers Qwen3ForCausalLM (float32, eager attention) saved with save_pretrained."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": theta}, initializer_range=std,
        attn_implementation="eager", dtype="float32")
    model = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():  # norms initialise to ones; randomise them so a wrong norm mapping cannot pass
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return model


def padded_batch(vocab: int, lengths: list[int], total: int, left: bool, seed: int = 0):
    """Tokens/positions/mask for texts of ``lengths`` padded to ``total`` on the left or right (pad id 0)."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), total), np.int32)
    positions = np.zeros((len(lengths), total), np.int32)
    mask = np.zeros((len(lengths), total), bool)
    texts = [rng.integers(1, vocab, n) for n in lengths]
    for i, text in enumerate(texts):
        n = len(text)
        sl = slice(total - n, total) if left else slice(0, n)
        tokens[i, sl], positions[i, sl], mask[i, sl] = text, np.arange(n), True
    return tokens, positions, mask


def hf_reference(hf_model, tokens, positions, mask):
    """Final-normed hidden states and logits from transformers (float32 numpy)."""
    import torch

    with torch.no_grad():
        out = hf_model.model(input_ids=torch.tensor(tokens, dtype=torch.long),
                             attention_mask=torch.tensor(mask, dtype=torch.long),
                             position_ids=torch.tensor(positions, dtype=torch.long))
        hidden = out.last_hidden_state
        logits = hf_model.lm_head(hidden)
    return hidden.numpy(), logits.numpy()
