"""The decoding settings a trained model is used with, as opposed to the ones its training run sampled with.

A run's ``config.json`` describes training: a stage-3 config samples rollouts (``sampling.temperature`` may be 1.0),
and a stage-2 config's ``sampling.max_new_tokens`` need not match the teacher traces it trained on
(``text.max_reasoning_tokens``). Inference must not inherit either by accident, so a finished stage writes
``model/inference.json``: greedy decoding, and the reasoning budget the model was trained to stop within. ``t1 embed``,
``t1 encode``, ``t1 search`` and :meth:`t1_jax.encoder.Encoder.from_checkpoint` use it unless the user names an
experiment (``--config``) or overrides fields (``--set sampling.temperature=0.7``), and log what they use.

Budgets by stage (our choice, docs/encoder.md): stage 2 (``reasoning``) -> ``text.max_reasoning_tokens`` (the
teacher traces' budget); stage 3 (``grpo``) -> ``sampling.max_new_tokens`` (the rollout budget GRPO rewarded under);
stage 1 and anything else -> ``sampling.max_new_tokens`` as configured.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Optional

from t1_jax import fs
from t1_jax.config import ConfigError, ExperimentConfig, SamplingConfig, from_dict, to_dict

log = logging.getLogger(__name__)

INFERENCE_FILE = "inference.json"
_BUDGET_BY_STAGE = {
    "reasoning": lambda cfg: cfg.text.max_reasoning_tokens,
    "grpo": lambda cfg: cfg.sampling.max_new_tokens,
}


def decoding_for(cfg: ExperimentConfig) -> SamplingConfig:
    """Greedy decoding with the reasoning budget of the stage ``cfg`` trains (see module doc)."""
    budget = _BUDGET_BY_STAGE.get(cfg.trainer.stage, lambda c: c.sampling.max_new_tokens)(cfg)
    return SamplingConfig(max_new_tokens=int(budget), temperature=0.0, top_k=0, top_p=1.0,
                          prompt_buckets=cfg.sampling.prompt_buckets)


def write(model_path: str, cfg: ExperimentConfig) -> None:
    """``model_path/inference.json``: the decoding a finished run's model is meant to be used with."""
    doc = {"sampling": to_dict(decoding_for(cfg)), "stage": cfg.trainer.stage,
           "note": "decoding used by t1 embed/encode/search unless --config or --set sampling.* says otherwise"}
    fs.write_text(fs.join(model_path, INFERENCE_FILE), json.dumps(doc, indent=2, sort_keys=True) + "\n")


def read(model_path: str) -> Optional[SamplingConfig]:
    """The saved inference decoding, or None for a model folder without one (an import, an older run)."""
    path = fs.join(model_path, INFERENCE_FILE)
    if not fs.isfile(path):
        return None
    try:
        doc = json.loads(fs.read_text(path))
        return from_dict(doc["sampling"], SamplingConfig)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a valid inference settings file ({e}); delete it to fall back to the run's "
                          f"config") from None


def run_config(model_path: str) -> tuple[ExperimentConfig, str]:
    """(config, where its decoding came from) for a saved model used at inference: the run's ``config.json`` beside
    ``model_path`` (else defaults) with ``sampling`` replaced by ``inference.json`` or, for runs saved before that
    file existed, by :func:`decoding_for` of the run's config."""
    from t1_jax import config as config_lib

    run_path = fs.join(fs.dirname(model_path), "config.json")
    cfg = config_lib.load_config(run_path) if fs.isfile(run_path) else ExperimentConfig()
    saved = read(model_path)
    if saved is not None:
        return dataclasses.replace(cfg, sampling=saved), fs.join(model_path, INFERENCE_FILE)
    if fs.isfile(run_path):
        return dataclasses.replace(cfg, sampling=decoding_for(cfg)), f"{run_path} (greedy, {cfg.trainer.stage} budget)"
    return cfg, "defaults"


def describe(s: SamplingConfig) -> str:
    """One line for the log: how queries will be decoded."""
    mode = "greedy" if s.temperature == 0 else (f"sampled at temperature {s.temperature:g}"
                                                + (f", top-k {s.top_k}" if s.top_k else "")
                                                + (f", top-p {s.top_p:g}" if s.top_p < 1 else ""))
    return f"{mode}, up to {s.max_new_tokens} reasoning tokens before <embtoken>"
