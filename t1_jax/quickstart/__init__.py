"""The quickstart's synthetic reasoning-retrieval task (``task``) and its small tokenizer (``tokenizer``)."""
from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class PreparedData:
    files: "object"  # t1_jax.quickstart.task.TaskFiles
    tokenizer_dir: str
    text: "object"  # t1_jax.config.TextConfig for this task and tokenizer


def prepare(out_dir: str, fast: bool = False, seed: int = 0, vocab_size: int = 1024) -> PreparedData:
    """Generate the task (``fast`` or ``full`` preset) under ``out_dir/data`` and train its tokenizer into
    ``out_dir/tokenizer``; return the file paths and the matching TextConfig."""
    from t1_jax.quickstart.task import PRESETS, generate_task, write_task
    from t1_jax.quickstart.tokenizer import text_config, tokenizer_texts, train_tokenizer

    task = generate_task(dataclasses.replace(PRESETS["fast" if fast else "full"], seed=seed))
    files = write_task(task, os.path.join(out_dir, "data"))
    text = text_config(os.path.join(out_dir, "tokenizer"))
    train_tokenizer(tokenizer_texts(task.texts(), text), vocab_size, text.tokenizer)
    return PreparedData(files, text.tokenizer, text)
