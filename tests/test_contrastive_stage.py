"""Stage 1/2 loss on an 8-device mesh vs a single-device reference; GradCache equals the direct step; gradient
accumulation keeps stage 2's CE a token mean over the whole step."""

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
from t1_jax.model.embedding import embed_last
from t1_jax.model.functions import model_functions
from t1_jax.stages.contrastive import make_loss_fn


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
        ce_sum, ce_weight = chunked_token_ce(q_hidden[:, :-1], batch["q_ids"][:, 1:], batch["q_loss"][:, 1:],
                                             model.logits, 1024)
        loss = loss + cfg.loss.sft_weight * ce_sum / ce_weight
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



def test_grad_accumulation_is_the_full_batch_token_mean(setup):
    """optimizer.grad_accum_steps=2 in stage 2: the reasoning CE is divided by the whole step's target tokens, so the
    accumulated CE, loss and gradient equal the full batch's token mean, computed here without the stage code
    (full-vocabulary log-softmax, gradients of each micro-batch's CE sum combined by hand). InfoNCE is per
    micro-batch: each micro-batch's documents are its negatives (the documented behaviour), so its reference is the
    mean of the micro-batches' InfoNCE. The micro-batches hold different numbers of target tokens, so a mean of
    per-micro-batch CE means has another gradient (checked: the test can fail)."""
    from t1_jax.optimizer import accumulate_gradients
    from t1_jax.stages.contrastive import loss_normalizers

    cfg, batch = setup
    steps = 2
    cfg = cfg_lib.apply_overrides(cfg, ["trainer.stage=reasoning", f"optimizer.grad_accum_steps={steps}",
                                        "mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"])
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    graphdef, init_params, _ = model_functions(cfg, mesh)
    params = jax.device_put(init_params(jax.random.PRNGKey(0)), jax.devices()[0])
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    b, n = batch["q_ids"].shape[0], batch["d_ids"].shape[0]
    rows = [slice(k * b // steps, (k + 1) * b // steps) for k in range(steps)]
    docs = [slice(k * n // steps, (k + 1) * n // steps) for k in range(steps)]
    counts = [float(batch["q_loss"][r, 1:].sum()) for r in rows]
    assert counts[0] != counts[1], counts  # otherwise a mean of means would equal the token mean

    def parts(p):
        """[mean of the micro-batches' InfoNCE, CE sum of micro-batch 0, CE sum of micro-batch 1]."""
        model = nnx.merge(graphdef, p)
        nce, ce_sums = 0.0, []
        for r, d in zip(rows, docs):
            q_bd, q_hidden = embed_last(model, jb["q_ids"][r], jb["q_valid"][r], True)
            d_ed, _ = embed_last(model, jb["d_ids"][d], jb["d_valid"][d], True)
            nce += losses.infonce(q_bd, d_ed, jb["doc_keys"][d], jb["pos_col"][r] - d.start, jb["pos_keys"][r],
                                  cfg.loss.temperature)[0] / steps
            logp = jax.nn.log_softmax(model.logits(q_hidden[:, :-1]).astype(jnp.float32), axis=-1)
            target = jnp.take_along_axis(logp, jb["q_ids"][r][:, 1:, None], axis=-1)[..., 0]
            ce_sums.append(-jnp.sum(target * jb["q_loss"][r][:, 1:]))
        return jnp.stack([nce, *ce_sums])

    w = cfg.loss.sft_weight
    token_mean = jnp.array([1.0, w / sum(counts), w / sum(counts)])
    mean_of_means = jnp.array([1.0, w / (steps * counts[0]), w / (steps * counts[1])])

    def reference(p):  # one forward, the gradients of both weightings of its parts
        values, vjp = jax.vjp(parts, p)
        return values, vjp(token_mean)[0], vjp(mean_of_means)[0]

    values, ref_grads, means_grads = jax.jit(reference)(params)
    ref_ce = float(values[1] + values[2]) / sum(counts)

    grad_fn = jax.value_and_grad(make_loss_fn(cfg, graphdef, mesh), has_aux=True)
    with mesh_lib.use_mesh(mesh):
        (loss, metrics), grads = jax.jit(lambda p, bt: accumulate_gradients(
            grad_fn, p, bt, jax.random.PRNGKey(1), steps, loss_normalizers(cfg)))(params, jb)

    assert abs(float(metrics["reasoning_ce"]) - ref_ce) <= 1e-5 * ref_ce
    assert abs(float(loss) - (float(values[0]) + w * ref_ce)) <= 1e-5 * float(loss)
    flat = lambda tree: jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])  # noqa: E731
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        assert _rel(g, r) <= 1e-5
    # What the step computed before: a mean of per-micro-batch means, measurably another gradient.
    assert _rel(flat(means_grads), flat(ref_grads)) > 1e-3
