"""An HF Qwen3 folder -> a self-contained T1 model folder (what ``t1 convert hf-to-t1`` writes).

``DST/params`` + ``DST/model_config.json`` (the parameters, ``t1_jax.model.params_io``) and ``DST/tokenizer`` (the HF
folder's tokenizer with ``<embtoken>`` added), so ``t1 train --set trainer.init_from=DST`` and
``t1 embed --checkpoint DST`` need nothing else. A freshly added ``<embtoken>`` gets the mean of the real token rows
(``set_token_row``, our design choice) and its id is recorded in ``model_config.json``; one the tokenizer already has
(a folder written by ``t1 convert t1-to-hf --tokenizer``) keeps its trained row.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

from t1_jax import fs
from t1_jax.config import ModelConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Imported:
    """What :func:`hf_to_t1` wrote."""

    cfg: ModelConfig  # the saved model's config (vocab_size and emb_token_id as stored)
    tokenizer: Optional[str]  # DST/tokenizer, or None when the HF folder had no tokenizer files
    row_from_mean_of: Optional[int]  # the <embtoken> row was set to the mean of this many rows (None: not set)


def hf_to_t1(src: str, dst: str, param_dtype: Optional[str] = None, emb_token: str = "<embtoken>",
             emb_token_id: Optional[int] = None, real_vocab: Optional[int] = None) -> Imported:
    """Import ``src`` (config.json + safetensors [+ tokenizer files]; local or gs://) into ``dst``.

    With tokenizer files in ``src``, ``<embtoken>``'s id comes from the tokenizer (``emb_token_id``, when given,
    must agree). Without them, ``emb_token_id`` (optional) names the row to initialise, as before tokenizers were
    carried, and ``dst`` gets no tokenizer: training then needs ``text.tokenizer``, embedding ``--tokenizer``.
    ``real_vocab``: the number of rows averaged (default: the tokenizer's size before ``<embtoken>``, or
    ``min(emb_token_id, vocab size)`` without a tokenizer).
    """
    from t1_jax.model.hf import import_hf, set_token_row
    from t1_jax.model.params_io import save_model
    from t1_jax.text import TOKENIZER_SUBDIR, add_emb_token, has_tokenizer, read_tokenizer, save_tokenizer

    overrides = {"param_dtype": param_dtype} if param_dtype else {}
    with fs.local_copy(src) as local:  # safetensors are memory-mapped: a gs:// folder is downloaded first
        model = import_hf(local, cfg_overrides=overrides)
        tokenizer = read_tokenizer(local) if has_tokenizer(local) else None
    averaged = None
    if tokenizer is None:
        log.warning("%s has no tokenizer files, so %s gets none: give `t1 train` text.tokenizer and `t1 embed` "
                    "--tokenizer", src, dst)
        if emb_token_id is not None:
            averaged = real_vocab or min(emb_token_id, model.cfg.vocab_size)
            set_token_row(model, emb_token_id, averaged)
    else:
        fresh = add_emb_token(tokenizer, emb_token)
        token_id = int(tokenizer.convert_tokens_to_ids(emb_token))
        if emb_token_id is not None and emb_token_id != token_id:
            raise ValueError(f"--emb-token-id {emb_token_id} differs from the id {src}'s tokenizer gives "
                             f"{emb_token} ({token_id}); leave --emb-token-id out")
        if fresh:
            averaged = real_vocab or len(tokenizer) - 1
            set_token_row(model, token_id, averaged)
        elif token_id >= model.cfg.vocab_size:
            raise ValueError(f"{src}'s tokenizer has {emb_token} at id {token_id}, outside the checkpoint's "
                             f"{model.cfg.vocab_size} embedding rows")
        else:  # an exported T1 model: its <embtoken> row is trained, keep it
            model.cfg = dataclasses.replace(model.cfg, emb_token_id=token_id)
    save_model(dst, model)
    out = fs.join(dst, TOKENIZER_SUBDIR)
    if tokenizer is not None:
        save_tokenizer(tokenizer, out)
    elif fs.isdir(out):  # left by an earlier conversion into dst: it would not match this model
        fs.rmtree(out)
    return Imported(model.cfg, out if tokenizer is not None else None, averaged)
