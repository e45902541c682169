"""From a config to a running stage: mesh, tokenizer, model config, data, initial parameters, trainer.

This is the one place that wires the library together for ``t1 train`` (and the quickstart, which calls it per
stage). Each stage's own builder (``build_stage`` in its module) is found through the stage registry
(:mod:`t1_jax.stages.registry`) by ``trainer.stage``; the wiring every stage shares (tokenizer, pretrained
parameters, training batches) lives here.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Callable, Optional

import jax
from flax import nnx

from t1_jax import config as config_lib
from t1_jax import distributed
from t1_jax import fs
from t1_jax import mesh as mesh_lib
from t1_jax.config import ConfigError, ExperimentConfig
from t1_jax.model.params_io import MODEL_SUBDIR, model_dir
from t1_jax.stages.registry import stage_spec
from t1_jax.trainer import Trainer, TrainState

log = logging.getLogger(__name__)

DATA_REPORT = "data_report.json"  # what the token budgets cut in the training data (t1_jax.data.budget)


def resolve_model_config(cfg: ExperimentConfig, formatter) -> ExperimentConfig:
    """Take ``<embtoken>``/EOS/pad ids from the tokenizer; refuse a vocabulary smaller than the tokenizer."""
    from t1_jax.text import model_config_for_tokenizer

    model_cfg = model_config_for_tokenizer(cfg.model, formatter)
    if model_cfg.vocab_size < len(formatter.tokenizer):
        raise ConfigError(f"model.vocab_size {model_cfg.vocab_size} is smaller than the tokenizer "
                          f"({len(formatter.tokenizer)} tokens including {cfg.text.emb_token})")
    return dataclasses.replace(cfg, model=model_cfg)


def resolve_tokenizer(cfg: ExperimentConfig) -> ExperimentConfig:
    """An empty ``text.tokenizer`` means the tokenizer saved with ``trainer.init_from``'s model (``<model>/tokenizer``:
    written by ``t1 convert hf-to-t1`` and by every finished stage); a named one is used as it is."""
    from t1_jax.text import TOKENIZER_SUBDIR

    if cfg.text.tokenizer:
        return cfg
    if not cfg.trainer.init_from:
        raise ConfigError("text.tokenizer is empty and there is no trainer.init_from to take the tokenizer from: set "
                          "text.tokenizer to a tokenizer folder")
    if not fs.exists(cfg.trainer.init_from):
        raise ConfigError(f"trainer.init_from {cfg.trainer.init_from} does not exist")
    source = model_dir(cfg.trainer.init_from)
    tokenizer = fs.join(source, TOKENIZER_SUBDIR)
    if not fs.isdir(tokenizer):
        raise ConfigError(f"text.tokenizer is empty and trainer.init_from {source} has no {TOKENIZER_SUBDIR}/ folder "
                          "(converted from an HF folder without tokenizer files?): set text.tokenizer to one")
    log.info("text.tokenizer: %s (saved with trainer.init_from)", tokenizer)
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, tokenizer=tokenizer))


def pretrained_loader(cfg: ExperimentConfig, mesh, formatter, param_dtype: Optional[str] = None
                      ) -> Optional[Callable]:
    """``trainer.init_from`` loaded as parameters in ``param_dtype`` (default ``model.param_dtype``: the float32
    masters, whatever dtype the folder stores, e.g. a bfloat16 HF import), or None without ``init_from``."""
    if not cfg.trainer.init_from:
        return None
    source = model_dir(cfg.trainer.init_from)
    dtype = param_dtype or cfg.model.param_dtype

    def load():
        from t1_jax.model.hf import set_token_row
        from t1_jax.model.params_io import load_model

        model = load_model(source, mesh=mesh, cfg_overrides={"param_dtype": dtype})
        loaded = model.cfg
        if (loaded.num_layers, loaded.hidden_size, loaded.num_heads) != (
                cfg.model.num_layers, cfg.model.hidden_size, cfg.model.num_heads):
            raise ConfigError(f"trainer.init_from {source} holds a model of {loaded.num_layers} layers x "
                              f"{loaded.hidden_size} wide, but the config asks for {cfg.model.num_layers} x "
                              f"{cfg.model.hidden_size}")
        if loaded.emb_token_id not in (None, cfg.model.emb_token_id):
            raise ConfigError(f"trainer.init_from {source} was saved with {cfg.text.emb_token} id "
                              f"{loaded.emb_token_id} but the tokenizer (text.tokenizer={cfg.text.tokenizer!r}) "
                              f"gives {cfg.model.emb_token_id}: use the tokenizer saved with the model")
        if loaded.emb_token_id is None:  # an HF import without a tokenizer: give <embtoken> a sensible row
            emb_id = cfg.model.emb_token_id
            model = set_token_row(model, emb_id, n_real_tokens=len(formatter.tokenizer) - 1)
            log.info("initialised the %s row (id %d) as the mean of the real token rows", cfg.text.emb_token, emb_id)
        if model.cfg.vocab_size != cfg.model.vocab_size:
            raise ConfigError(f"trainer.init_from {source} has vocab_size {model.cfg.vocab_size}; set "
                              f"model.vocab_size={model.cfg.vocab_size}")
        return nnx.split(model)[1]

    return load


def training_batches(cfg: ExperimentConfig, mesh, formatter, query_kind: str):
    """(this host's checkpointable batch iterator, the data's budget report as ``data/*`` metrics): examples loaded,
    measured against the token budgets (stage 2 skips traces that would be cut), then the grain pipeline."""
    from t1_jax.data.budget import apply_budgets
    from t1_jax.data.examples import load_examples
    from t1_jax.data.pipeline import contrastive_batches

    examples = load_examples(cfg.data, require_reasoning=query_kind == "query_with_reasoning")
    examples, report = apply_budgets(examples, formatter, query_kind, cfg.data.keep_cut_reasoning)
    host_rows = mesh_lib.process_batch_rows(mesh, cfg.data.global_batch_size)  # this host's rows of each batch
    batches = contrastive_batches(examples, formatter, cfg.data, len(host_rows), query_kind=query_kind,
                                  host_rows=host_rows)
    return batches, report.metrics()


def train(cfg: ExperimentConfig, workdir: str) -> TrainState:
    """Validate, build the stage named by ``trainer.stage``, train (resuming), and save the final model."""
    from t1_jax.text import TOKENIZER_SUBDIR, formatter_from_config, save_tokenizer

    distributed.initialize(cfg.mesh)
    config_lib.validate(cfg, device_count=jax.device_count(), training=True)
    spec = stage_spec(cfg.trainer.stage)
    cfg = resolve_tokenizer(cfg)
    formatter = formatter_from_config(cfg.text)
    cfg = resolve_model_config(cfg, formatter)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    stage = spec.build_stage(cfg, mesh, formatter)
    trainer = Trainer(cfg, workdir, mesh)
    if stage.data_report is not None and jax.process_index() == 0:  # a shared path: one writer
        fs.write_text(fs.join(workdir, DATA_REPORT), json.dumps(stage.data_report, indent=2) + "\n")
    state = trainer.fit(stage)
    if int(state.step) >= cfg.trainer.num_steps:
        from t1_jax.model import abstract_model
        from t1_jax.model.params_io import save_model

        graphdef = nnx.graphdef(abstract_model(cfg.model))
        out = fs.join(workdir, MODEL_SUBDIR)
        save_model(out, nnx.merge(graphdef, state.params))
        if jax.process_index() == 0:  # a shared path: one writer
            from t1_jax import inference_defaults

            save_tokenizer(formatter.tokenizer, fs.join(out, TOKENIZER_SUBDIR))
            inference_defaults.write(out, cfg)  # greedy, this stage's reasoning budget: not the training sampling
        log.info("finished %s: model saved to %s", stage.name, out)
    return state
