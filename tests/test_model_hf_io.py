"""HF export -> transformers load, import/export round trips, clear errors on bad checkpoints, vocab growth, orbax
save/load, the convert command, presets."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from tests.model_helpers import padded_batch, rel_err, save_random_hf
from t1_jax import cli
from t1_jax.config import ConfigError, MeshConfig
from t1_jax.mesh import logical_to_spec, make_mesh
from t1_jax.model import PRESETS, Qwen3, from_hf_config
from t1_jax.model import safetensors_io as st
from t1_jax.model.hf import export_hf, import_hf, set_token_row
from t1_jax.model.params_io import load_model, save_model
from t1_jax.text import load_tokenizer

TOL = 1e-5


def _params(model) -> dict:
    return {k: np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model)))}


def _hf_logits(directory, tokens, positions, mask):
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                 position_ids=torch.tensor(positions, dtype=torch.long))
    return out.logits.numpy()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_export_loads_in_transformers_with_same_logits(tmp_path, tied):
    cfg = dataclasses.replace(PRESETS["tiny"], tie_word_embeddings=tied, rope_theta=5e6)
    model = Qwen3(cfg, rngs=nnx.Rngs(3))  # our own random init: nothing is copied from a transformers model
    tokens, positions, mask = padded_batch(cfg.vocab_size, [6, 4], 6, left=True)
    ours = np.asarray(model.logits(model(tokens, positions, mask)[0]))
    export_hf(model, str(tmp_path / "out"))
    ref = _hf_logits(str(tmp_path / "out"), tokens, positions, mask)
    assert rel_err(ours[mask], ref[mask]) <= TOL


def test_import_export_import_is_identity(tmp_path):
    save_random_hf(tmp_path / "hf", tied=False)
    first = import_hf(str(tmp_path / "hf"))
    files = export_hf(first, str(tmp_path / "out"), max_shard_bytes=100_000)  # several shards + index
    assert len(files) > 1 and os.path.isfile(tmp_path / "out" / st.INDEX_FILE)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    second = import_hf(str(tmp_path / "out"), mesh=mesh)
    assert second.layers.gate_proj[...].sharding.spec == logical_to_spec(("layers", "mlp", "embed"))
    a, b = _params(first), _params(second)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    set_token_row(second, 600, n_real_tokens=500)  # growth keeps each table on its sharding
    assert second.embed_tokens[...].shape == (640, 64)
    assert second.embed_tokens[...].sharding.spec == logical_to_spec(("vocab", "embed"))
    assert second.lm_head[...].sharding.spec == logical_to_spec(("vocab", "embed"))
    # and the exported tensors are bit-identical to the transformers originals
    original, exported = st.index_checkpoint(str(tmp_path / "hf")), st.index_checkpoint(str(tmp_path / "out"))
    assert original.keys() == exported.keys()
    for name in original:
        np.testing.assert_array_equal(st.read_tensor(original[name]), st.read_tensor(exported[name]), err_msg=name)


def test_bfloat16_checkpoint_imports_exactly(tmp_path):
    hf_model = save_random_hf(tmp_path / "f32")
    hf_model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = import_hf(str(tmp_path / "bf16"))
    assert model.cfg.param_dtype == "bfloat16" and model.layers.q_proj[...].dtype == jax.numpy.bfloat16
    ref = hf_model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()  # [n*h, d]
    ours = np.asarray(model.layers.q_proj[...][1], np.float32).reshape(-1, model.cfg.hidden_size)
    np.testing.assert_array_equal(ours, ref)


def _rewrite(src, dst, edit):
    """Copy the single-file checkpoint at src to dst with edit(dict of name->array) applied."""
    os.makedirs(dst, exist_ok=True)
    infos = st.index_checkpoint(src)
    tensors = edit({name: st.read_tensor(info) for name, info in infos.items()})
    st.write_file(os.path.join(dst, st.SINGLE_FILE), [(n, a.shape, a.dtype) for n, a in tensors.items()],
                  tensors.__getitem__)
    with open(os.path.join(src, "config.json")) as f, open(os.path.join(dst, "config.json"), "w") as g:
        g.write(f.read())


def test_bad_checkpoints_give_clear_errors(tmp_path):
    save_random_hf(tmp_path / "hf")
    src = str(tmp_path / "hf")
    q1 = "model.layers.1.self_attn.q_proj.weight"

    def drop(t):
        del t[q1]
        return t

    _rewrite(src, tmp_path / "missing", drop)
    with pytest.raises(ValueError, match=rf"missing key {q1} \(expected shape \[64, 64\]\)"):
        import_hf(str(tmp_path / "missing"))

    _rewrite(src, tmp_path / "extra", lambda t: {**t, "model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected key model.layers.0.self_attn.q_proj.bias \(shape \[64\]\)"):
        import_hf(str(tmp_path / "extra"))

    _rewrite(src, tmp_path / "shape", lambda t: {**t, q1: np.zeros((32, 64), np.float32)})
    with pytest.raises(ValueError, match=rf"key {q1} has shape \[32, 64\] in the checkpoint but the model expects "
                                         r"\[64, 64\]"):
        import_hf(str(tmp_path / "shape"))

    truncated = tmp_path / "truncated"
    _rewrite(src, truncated, lambda t: t)
    path = truncated / st.SINGLE_FILE
    os.truncate(path, os.path.getsize(path) - 100)
    with pytest.raises(ValueError, match=r"model.safetensors: tensor .* inconsistent byte range"):
        import_hf(str(truncated))

    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"\x00garbage")
    with pytest.raises(ValueError, match=r"corrupted safetensors header"):
        import_hf(str(truncated))

    with pytest.raises(FileNotFoundError, match=r"neither model.safetensors nor model.safetensors.index.json"):
        os.makedirs(tmp_path / "empty")
        with open(tmp_path / "empty" / "config.json", "w") as f:
            f.write((tmp_path / "hf" / "config.json").read_text())
        import_hf(str(tmp_path / "empty"))

    bad_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    bad_config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}
    with pytest.raises(ConfigError, match="rope type 'yarn' is not supported"):
        from_hf_config(bad_config)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_set_token_row(tied):
    cfg = dataclasses.replace(PRESETS["tiny"], tie_word_embeddings=tied)
    model = Qwen3(cfg, rngs=nnx.Rngs(0))
    before = np.asarray(model.embed_tokens[...])
    set_token_row(model, 515, n_real_tokens=500)  # outside the 512 rows: grow to 640
    emb = np.asarray(model.embed_tokens[...])
    assert model.cfg.vocab_size == 640 and model.cfg.emb_token_id == 515 and emb.shape == (640, cfg.hidden_size)
    np.testing.assert_array_equal(emb[:512], before)
    np.testing.assert_allclose(emb[515], before[:500].mean(0), rtol=1e-6, atol=1e-7)
    if not tied:
        assert model.lm_head[...].shape == (640, cfg.hidden_size)
        np.testing.assert_allclose(model.lm_head[...][515], np.asarray(model.lm_head[...])[:500].mean(0),
                                   rtol=1e-6, atol=1e-7)
    set_token_row(model, 10, n_real_tokens=8)  # inside: no growth, row re-initialised
    assert model.cfg.vocab_size == 640
    np.testing.assert_allclose(model.embed_tokens[...][10], emb[:8].mean(0), rtol=1e-6, atol=1e-7)
    hidden, _ = model(np.array([[1, 515, 10]]), np.array([[0, 1, 2]]), np.ones((1, 3), bool))
    assert model.logits(hidden).shape == (1, 3, 640)


def test_save_load_roundtrip_sharded(tmp_path):
    model = Qwen3(dataclasses.replace(PRESETS["tiny-untied"], remat="dots"), rngs=nnx.Rngs(0))
    save_model(str(tmp_path / "m"), model)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    loaded = load_model(str(tmp_path / "m"), mesh=mesh)
    assert loaded.cfg == model.cfg
    assert loaded.lm_head[...].sharding.spec == logical_to_spec(("vocab", "embed"))
    a, b = _params(model), _params(loaded)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    with pytest.raises(FileNotFoundError, match="model_config.json is missing"):
        load_model(str(tmp_path))


def test_convert_command_round_trip(tmp_path):
    hf_model = save_random_hf(tmp_path / "hf")
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer_config.json").write_text('{"model_max_length": 128}')
    assert cli.main(["convert", "hf-to-t1", str(tmp_path / "hf"), str(tmp_path / "t1"), "--emb-token-id", "600"]) == 0
    assert load_model(str(tmp_path / "t1")).cfg.vocab_size == 640
    assert cli.main(["convert", "t1-to-hf", str(tmp_path / "t1"), str(tmp_path / "out"), "--tokenizer",
                     str(tok_dir)]) == 0
    assert (tmp_path / "out" / "tokenizer_config.json").read_text() == '{"model_max_length": 128}'
    tokens, positions, mask = padded_batch(512, [5, 3], 5, left=False)
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                       attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
    out = _hf_logits(str(tmp_path / "out"), tokens, positions, mask)  # original rows unchanged by the growth
    assert out.shape[-1] == 640
    assert rel_err(out[..., :512][mask], ref[mask]) <= TOL
    assert cli.main(["convert", "hf-to-t1", str(tmp_path / "nowhere"), str(tmp_path / "x")]) != 0

    # An export into a folder that holds an earlier, sharded export: the old shards and index are removed, so a
    # reader sees the new model only (it used to take the old index and import the earlier model).
    assert cli.main(["convert", "t1-to-hf", str(tmp_path / "t1"), str(tmp_path / "out"), "--max-shard-gb",
                     "0.0001"]) == 0
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    assert not (tmp_path / "out" / "model.safetensors").exists()  # the single file of the first export is gone
    assert cli.main(["convert", "t1-to-hf", str(tmp_path / "t1"), str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("model*")) == ["model.safetensors"]



def test_convert_without_tokenizer_warns_and_later_commands_ask_for_one(tmp_path, capsys):
    """An HF folder without tokenizer files converts (one warning line); `t1 train` from it with the 4B experiment's
    empty text.tokenizer and `t1 embed --checkpoint` on it each fail in one line that names what to give."""
    save_random_hf(tmp_path / "hf")
    dst = tmp_path / "t1"
    (dst / "tokenizer").mkdir(parents=True)  # left by an earlier conversion: removed, it would not match
    assert cli.main(["convert", "hf-to-t1", str(tmp_path / "hf"), str(dst)]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and f"{tmp_path / 'hf'} has no tokenizer files" in warnings[0]
    assert "text.tokenizer" in warnings[0] and "--tokenizer" in warnings[0]
    assert "no tokenizer; no <embtoken>" in err
    assert not (dst / "tokenizer").exists() and load_model(str(dst)).cfg.emb_token_id is None

    train = ["train", "--config", "experiments/t1_4b_stage1.py", "--workdir", str(tmp_path / "run"), "--set",
             f"trainer.init_from={dst}", "mesh.fsdp=8"]
    assert cli.main(train) == 2
    *logged, err = capsys.readouterr().err.strip().splitlines()  # the error is one line after the log lines
    assert all(" INFO " in line for line in logged)
    assert err == (f"t1 train: config error: text.tokenizer is empty and trainer.init_from {dst} has no tokenizer/ "
                   "folder (converted from an HF folder without tokenizer files?): set text.tokenizer to one")
    assert cli.main(train + [f"text.tokenizer={tmp_path / 'no-such-tokenizer'}"]) == 1  # named: never replaced
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"t1 train: error: tokenizer folder {tmp_path / 'no-such-tokenizer'} does not exist")
    assert cli.main(train[:-2] + [f"trainer.init_from={tmp_path / 'nowhere'}", "mesh.fsdp=8"]) == 2
    assert f"trainer.init_from {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"_id": "d0", "text": "alpha"}\n')
    assert cli.main(["embed", "--checkpoint", str(dst), "--docs", str(docs), "--out", str(tmp_path / "d.npy")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("t1 embed: error: ") and f"{dst} has no tokenizer/ folder" in err
    assert "pass --tokenizer DIR" in err


def test_convert_keeps_a_trained_embtoken_row(tmp_path, capsys):
    """A tokenizer that already has <embtoken> (an exported T1 model) keeps the checkpoint's row and records the id;
    --emb-token-id must agree with the tokenizer."""
    from t1_jax.quickstart.tokenizer import EMB_TOKEN, train_tokenizer

    hf_model = save_random_hf(tmp_path / "hf")
    train_tokenizer(["alpha beta gamma"] * 4, 300, str(tmp_path / "hf"))  # <embtoken> is id 3
    emb_row = hf_model.model.embed_tokens.weight[3].detach().numpy()
    assert cli.main(["convert", "hf-to-t1", str(tmp_path / "hf"), str(tmp_path / "t1")]) == 0
    assert "<embtoken> id 3, its trained row kept" in capsys.readouterr().err
    model = load_model(str(tmp_path / "t1"))
    assert (model.cfg.emb_token_id, model.cfg.vocab_size) == (3, 512)
    np.testing.assert_array_equal(np.asarray(model.embed_tokens[...])[3], emb_row)
    assert load_tokenizer(str(tmp_path / "t1" / "tokenizer")).convert_tokens_to_ids(EMB_TOKEN) == 3
    # training from it with a tokenizer that puts <embtoken> elsewhere is refused when the model loads
    from t1_jax.config import ExperimentConfig, TrainerConfig
    from t1_jax.stages.build import pretrained_loader

    other = ExperimentConfig(model=dataclasses.replace(model.cfg, emb_token_id=4),
                             trainer=TrainerConfig(init_from=str(tmp_path / "t1")))
    with pytest.raises(ConfigError, match="was saved with <embtoken> id 3 but the tokenizer .* gives 4"):
        pretrained_loader(other, None, None)()
    assert cli.main(["convert", "hf-to-t1", str(tmp_path / "hf"), str(tmp_path / "t2"), "--emb-token-id", "7"]) == 1
    assert "--emb-token-id 7 differs from the id" in capsys.readouterr().err

def test_presets_match_hf_configs():
    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
              "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 5000000, "rms_norm_eps": 1e-6,
              "max_position_embeddings": 262144, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
              "eos_token_id": 151645, "use_sliding_window": False, "hidden_act": "silu", "attention_bias": False}
    cfg = from_hf_config(json.dumps(config))
    expected = PRESETS["qwen3-4b-instruct-2507"]
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
              "head_dim", "rope_theta", "max_position_embeddings", "tie_word_embeddings", "param_dtype")
    assert {f: getattr(cfg, f) for f in fields} == {f: getattr(expected, f) for f in fields}
    assert PRESETS["qwen3-8b"].tie_word_embeddings is False and PRESETS["qwen3-4b"].rope_theta == 1e6
    for name, preset_cfg in PRESETS.items():
        assert preset_cfg.validate() == [], name
