"""What may change when a training run resumes in the same workdir, and what may not.

A workdir's ``config.json`` records the config that produced its checkpoints. Resuming with a different config is
fine for settings that do not change what the checkpoint holds or which data the next steps read (``num_steps``,
logging, checkpoint cadence, the mesh, remat, the compute dtype, the master dtype: orbax casts on restore); it is
refused, with the keys named, for the rest: the model's shape (the restore would fail halfway, or worse, not fail)
and the data order (the saved iterator position would silently index another stream). An accepted change keeps the
history: the earlier ``config.json`` is kept as ``config.before-step-N.json`` and the changed keys are logged.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Optional

from t1_jax import config as config_lib
from t1_jax import fs

log = logging.getLogger(__name__)

# Keys (dotted) whose change makes a checkpoint unusable or the resumed data stream different from the saved one.
FIXED_ON_RESUME = (
    "model.vocab_size", "model.hidden_size", "model.intermediate_size", "model.num_layers", "model.num_heads",
    "model.num_kv_heads", "model.head_dim", "model.tie_word_embeddings", "model.scan_layers", "model.emb_token_id",
    "data.train_path", "data.format", "data.corpus_path", "data.beir_split", "data.global_batch_size",
    "data.num_hard_negatives", "data.seed", "data.shuffle", "data.num_epochs",
    "trainer.stage", "trainer.seed", "trainer.init_from",
    "text.tokenizer",
)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def changed_keys(before: dict, after: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (before, after)}`` for every leaf that differs (lists compared as JSON)."""
    a, b = _flat(before), _flat(after)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)}


def check_and_record(workdir: str, cfg: config_lib.ExperimentConfig, latest_step: Optional[int],
                     write: bool = True) -> None:
    """Refuse (ConfigError) a resume whose config changes a key of ``FIXED_ON_RESUME``; otherwise keep the earlier
    config as ``config.before-step-N.json`` when anything changed, and write the new ``config.json`` (``write``:
    process 0 only). A workdir without checkpoints starts fresh: its config is simply replaced."""
    path = fs.join(workdir, "config.json")
    new = config_lib.to_dict(cfg)
    before = None
    if latest_step is not None and fs.isfile(path):
        try:
            before = json.loads(fs.read_text(path))
        except ValueError:
            log.warning("%s is not valid JSON; it is replaced by this run's config", path)
    if before is not None:
        changes = changed_keys(before, new)
        fixed = {k: v for k, v in changes.items() if k in FIXED_ON_RESUME}
        if fixed:
            listed = "; ".join(f"{k}: {old!r} -> {now!r}" for k, (old, now) in fixed.items())
            raise config_lib.ConfigError(
                f"{workdir} holds checkpoints up to step {latest_step} trained with another config, and these keys "
                f"cannot change on resume: {listed}. Resume with the run's own config (--config {path}), or start "
                f"a new workdir (--set trainer.init_from={workdir} to start from its model)")
        if changes and write:
            kept = fs.join(workdir, f"config.before-step-{latest_step}.json")
            fs.write_text(kept, fs.read_text(path))
            log.info("resuming with a changed config (%s); the earlier one is kept as %s",
                     ", ".join(f"{k}: {old!r} -> {now!r}" for k, (old, now) in changes.items()), kept)
    if write:
        config_lib.save_json(cfg, path)
