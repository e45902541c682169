"""T1-4B on BRIGHT's long-document setting: documents encoded whole up to 8,192 tokens with the splash attention
kernel; everything else as t1_4b_eval_bright.py (queries, reasoning, index, search).

OUR CHOICES (the T1 report publishes none of these): the 8,192-token document budget (twice mteb's 4,096-token cap,
which exists because longer documents ran out of memory with materialised attention), splash attention, the encode
batch of each row. `t1 compile-check` checks the document encoding step (COMPILE_CHECK = "encode"):
  t1 compile-check --config experiments/t1_4b_eval_bright_longdoc.py --topology v5p-8
Compiled for v5p-8 (docs/tpu.md, "Long documents"): 12.9 of 95 GiB per chip at the row's 64 documents per call.
Slice selection and --set overrides as in t1_4b_eval_bright.py.
Documents are bucketed by the encoder (32 ... 512 tokens, then multiples of 512 up to 8192), so short pages do not
pay for long ones.
"""
import dataclasses

from t1_jax.layouts import PodLayout, apply_layout, sibling_experiment

COMPILE_CHECK = "encode"
DEFAULT_TOPOLOGY = "v5p-8"
LAYOUTS = {
    "v5p-8": PodLayout(data=4, fsdp=1, tensor=1, global_batch_size=4, extra=(("retrieval.encode_batch_size", "64"),)),
}


def get_config():
    cfg = sibling_experiment(__file__, "t1_4b_eval_bright").base_config()
    cfg = dataclasses.replace(cfg, name="t1-4b-eval-bright-longdoc",
                              model=dataclasses.replace(cfg.model, attention_impl="splash"),
                              text=dataclasses.replace(cfg.text, max_doc_tokens=8192))
    return apply_layout(cfg, LAYOUTS, DEFAULT_TOPOLOGY)
