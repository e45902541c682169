"""Stage 1/2 loss on an 8-device mesh vs a single-device reference; GradCache equals the direct step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t1_jax import config as cfg_lib
from t1_jax import losses
from t1_jax import mesh as mesh_lib
from t1_jax.logprobs import chunked_token_ce
from t1_jax.stages.build import resolve_model_config
from t1_jax.stages.contrastive import embed_last, make_loss_fn, model_functions


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from t1_jax.data.examples import load_jsonl_examples
    from t1_jax.data.pipeline import contrastive_batches
    from t1_jax.quickstart.task import PRESETS, generate_task, write_task
    from t1_jax.quickstart.tokenizer import train_tokenizer
    from t1_jax.text import formatter_from_config

    root = tmp_path_factory.mktemp("stage")
    task = generate_task(PRESETS["fast"])
    files = write_task(task, str(root))
    tok = train_tokenizer(task.texts(), 400, str(root / "tok"))
    cfg = cfg_lib.load_config("experiments/tiny_stage1.py", [
        f"text.tokenizer={tok}", "text.max_query_tokens=128", "text.max_doc_tokens=96",
        "text.max_reasoning_tokens=48", "loss.ce_chunk_size=32", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    formatter = formatter_from_config(cfg.text)
    cfg = resolve_model_config(cfg, formatter)
    examples, _ = load_jsonl_examples(files.train_jsonl)
    batch = next(contrastive_batches(examples, formatter, cfg.data, 8, with_reasoning=True))
    return cfg, batch


def _reference_loss(cfg, graphdef, params, batch, with_reasoning):
    """Single device, no mesh: plain InfoNCE over the whole batch (+ CE), written without the stage code."""
    model = nnx.merge(graphdef, params)
    q, q_hidden = embed_last(model, batch["q_ids"], batch["q_valid"], True)
    d, _ = embed_last(model, batch["d_ids"], batch["d_valid"], True)
    loss, _ = losses.infonce(q, d, batch["doc_keys"], batch["pos_col"], batch["pos_keys"], cfg.loss.temperature)
    if with_reasoning:
        ce_sum, ce_n = chunked_token_ce(q_hidden[:, :-1], batch["q_ids"][:, 1:], batch["q_loss"][:, 1:], model.logits,
                                        1024)
        loss = loss + cfg.loss.sft_weight * ce_sum / ce_n
    return loss


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


# Stage 1 is the same loss without the cross-entropy term; stage 2 covers both terms (and GradCache).
@pytest.mark.parametrize("stage,gradcache", [("reasoning", 0), ("reasoning", 4)])
def test_sharded_loss_and_grad_equal_single_device(setup, stage, gradcache):
    cfg, batch = setup
    cfg = cfg_lib.apply_overrides(cfg, [f"trainer.stage={stage}", f"loss.gradcache_chunk={gradcache}"])
    mesh = mesh_lib.make_mesh(cfg.mesh)
    graphdef, init_params, shardings = model_functions(cfg, mesh)
    params = jax.device_put(init_params(jax.random.PRNGKey(0)), jax.devices()[0])  # the reference runs on one device
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(
        lambda p: _reference_loss(cfg, graphdef, p, jbatch, stage == "reasoning")))(params)

    loss_fn = make_loss_fn(cfg, graphdef, mesh)
    batch_sharding = {k: mesh_lib.logical_sharding(mesh, ("batch",) + (None,) * (v.ndim - 1))
                      for k, v in batch.items()}
    sharded_params = jax.device_put(params, shardings)
    sharded_batch = jax.device_put(jbatch, batch_sharding)
    with mesh_lib.use_mesh(mesh):
        (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
            sharded_params, sharded_batch, jax.random.PRNGKey(1))
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    flat_ref = jax.tree.leaves(ref_grads)
    flat = jax.tree.leaves(grads)
    assert len(flat) == len(flat_ref)
    for g, r in zip(flat, flat_ref):
        assert _rel(g, r) <= 1e-5
    if stage == "reasoning":
        assert float(metrics["reasoning_ce"]) > 0
    # The parameters really are sharded (fsdp x tensor), not replicated.
    embed = jax.tree.leaves(sharded_params["embed_tokens"])[0]
    assert len({tuple((i.start, i.stop) for i in s.index) for s in embed.addressable_shards}) == 4
