"""T1-4B stage 1 on long documents (up to 4,096 tokens) with the splash attention kernel: t1_4b_stage1.py's model,
optimizer and loss, longer document budget, a layout per slice that fits it.

OUR CHOICES (the T1 report publishes none of these): the 4,096-token document budget (mteb caps BRIGHT documents
there), the length buckets, the batch and GradCache chunk of each row, splash attention. The v5p-8 row is the
`t1 compile-check` result in docs/tpu.md ("Long documents": t1_4b_stage1.py with these settings, the same shapes:
89.1 GiB per chip); with the XLA attention, float32 scores of [32 heads, 4096, 4096] per document and layer leave
room for 16 queries per pass instead of 64.

  t1 compile-check --config experiments/t1_4b_stage1_longdoc.py --topology v5p-8
Slice selection and --set overrides as in t1_4b_stage1.py.
Sequence budgets (tokens): query prompt 256 (+1 <embtoken>, padded to 320), document 4096 (with <embtoken>), padded
to 1024 or 4096 (a batch of short documents pays for 1024, not 4096).
"""
import dataclasses

from t1_jax.layouts import PodLayout, apply_layout, sibling_experiment

DEFAULT_TOPOLOGY = "v5p-8"
# GradCache chunk = queries per forward/backward pass (each with 2 documents): what the activations scale with.
LAYOUTS = {
    "v5p-8": PodLayout(data=1, fsdp=4, tensor=1, global_batch_size=512, gradcache_chunk=64),
}


def get_config():
    cfg = sibling_experiment(__file__, "t1_4b_stage1").base_config()
    cfg = dataclasses.replace(
        cfg, name="t1-4b-stage1-longdoc",
        model=dataclasses.replace(cfg.model, attention_impl="splash"),
        text=dataclasses.replace(cfg.text, max_doc_tokens=4096),
        data=dataclasses.replace(cfg.data, length_buckets=(320, 1024, 4096)))
    return apply_layout(cfg, LAYOUTS, DEFAULT_TOPOLOGY)
