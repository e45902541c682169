"""A tiny random T1 model saved as a `t1 train`-like workdir (config.json, model/ in orbax, model/tokenizer) with a
word-level tokenizer trained on a fixed vocabulary: the checkpoint the encoder and evaluation tests load."""
from pathlib import Path

from flax import nnx

from t1_jax.config import ExperimentConfig, ModelConfig, RetrievalConfig, SamplingConfig, save_json
from t1_jax.model import Qwen3
from t1_jax.model.params_io import save_model
from t1_jax.quickstart.tokenizer import text_config, train_tokenizer
from t1_jax.text import load_tokenizer

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda river stone cloud seven forty apple "
         "orange window garden").split()


def random_text(rng, n: int) -> str:
    """``n`` words of WORDS drawn with ``rng`` (a numpy Generator)."""
    return " ".join(rng.choice(WORDS, n))


def write_toy_run(root: Path, *, max_tokens: int, sampling: SamplingConfig, retrieval: RetrievalConfig, seed: int,
                  **model_fields) -> Path:
    """Write the workdir under ``root`` and return ``root``. ``max_tokens`` caps queries and documents;
    ``model_fields`` override ModelConfig's defaults (the special token ids come from the tokenizer)."""
    tok_dir = train_tokenizer([" ".join(WORDS)] * 4, vocab_size=300, out_dir=str(root / "tok"))
    tokenizer = load_tokenizer(tok_dir)
    cfg = ExperimentConfig(
        text=text_config(tok_dir, max_query_tokens=max_tokens, max_doc_tokens=max_tokens),
        sampling=sampling, retrieval=retrieval,
        model=ModelConfig(emb_token_id=tokenizer.convert_tokens_to_ids("<embtoken>"),
                          eos_token_ids=(tokenizer.eos_token_id,), pad_token_id=0, **model_fields))
    save_model(str(root / "model"), Qwen3(cfg.model, rngs=nnx.Rngs(seed)))
    tokenizer.save_pretrained(str(root / "model" / "tokenizer"))
    save_json(cfg, str(root / "config.json"))
    return root
