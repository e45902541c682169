"""Parity with transformers' Qwen3ForCausalLM (float32, random weights, saved and imported through our importer)."""
import numpy as np
import pytest

from tests.model_helpers import hf_reference, padded_batch, rel_err, save_random_hf
from t1_jax.model.hf import import_hf

TOL = 1e-5


def _check(tmp_path, left: bool, lengths, total, **shape):
    hf_model = save_random_hf(tmp_path / "hf", **shape)
    model = import_hf(str(tmp_path / "hf"))
    tokens, positions, mask = padded_batch(shape.get("vocab", 512), lengths, total, left)
    ref_hidden, ref_logits = hf_reference(hf_model, tokens, positions, mask)
    hidden, _ = model(tokens, positions, mask)
    logits = model.logits(hidden[mask])
    hidden = np.asarray(hidden)[mask]
    assert rel_err(hidden, ref_hidden[mask]) <= TOL
    assert rel_err(logits, ref_logits[mask]) <= TOL
    return model, (tokens, positions, mask), hidden


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_tiny_parity(tmp_path, left, tied):
    _check(tmp_path, left, [7, 3, 5], 8, tied=tied, theta=1e6)


def test_left_and_right_padding_agree(tmp_path):
    save_random_hf(tmp_path / "hf")
    model = import_hf(str(tmp_path / "hf"))
    right = padded_batch(512, [6, 2, 4], 6, left=False, seed=3)
    left = padded_batch(512, [6, 2, 4], 6, left=True, seed=3)
    h_right = np.asarray(model(*right)[0])[right[2]]
    h_left = np.asarray(model(*left)[0])[left[2]]
    assert rel_err(h_left, h_right) <= TOL


def test_mid_4b_width_parity(tmp_path):
    """Two layers at the real 4B widths (hidden 2560, mlp 9728, 32/8 heads, head_dim 128, tied), padded batch, with a
    reduced vocabulary so it stays fast; the full-vocabulary version below is marked slow."""
    _check(tmp_path, True, [9, 4], 9, vocab=1024, hidden=2560, inter=9728, layers=2, heads=32, kv_heads=8,
           head_dim=128, tied=True, theta=5e6)


@pytest.mark.slow
def test_4b_width_parity_full_vocab(tmp_path):
    """Two layers at the real 4B widths with the real 151,936-row tied vocabulary, on a padded batch."""
    _check(tmp_path, True, [9, 4], 9, vocab=151936, hidden=2560, inter=9728, layers=2, heads=32, kv_heads=8,
           head_dim=128, tied=True, theta=5e6)
