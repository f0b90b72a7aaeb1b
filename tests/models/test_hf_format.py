"""Checkpoint formats (sharded, bf16) and the errors bad checkpoints get."""

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jaxthink
from jaxthink.models import CheckpointError, ConfigError, ModelConfig
from tests.hf_models import write_tiny_hf


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    write_tiny_hf(path, "qwen2", num_hidden_layers=1)
    return path


def copy_ckpt(src, dst, config_changes=None, tensors=None):
    """A copy of `src` with config.json keys changed and tensors replaced/removed (None)."""
    dst.mkdir(exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    config.update(config_changes or {})
    (dst / "config.json").write_text(json.dumps(config))
    weights = load_file(src / "model.safetensors")
    for name, value in (tensors or {}).items():
        if value is None:
            weights.pop(name)
        else:
            weights[name] = value
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def load(path):
    return jaxthink.load(path, tokenizer=False)


def test_sharded_checkpoint_with_index_loads(ckpt, tmp_path):
    model, _, _ = load(ckpt)
    jaxthink.export_hf(model, tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reloaded, _, _ = load(tmp_path)
    np.testing.assert_array_equal(reloaded.embed[...], model.embed[...])


def test_bf16_checkpoint_loads_as_fp32_and_exports_back_exactly(ckpt, tmp_path):
    weights = {
        k: v.astype(ml_dtypes.bfloat16) for k, v in load_file(ckpt / "model.safetensors").items()
    }
    src = copy_ckpt(ckpt, tmp_path / "bf16", {"dtype": "bfloat16"}, weights)
    model, _, cfg = load(src)
    assert model.embed[...].dtype == np.float32
    assert cfg.checkpoint_dtype == "bfloat16"
    jaxthink.export_hf(model, tmp_path / "out")
    out = load_file(tmp_path / "out" / "model.safetensors")
    for name, tensor in out.items():
        assert tensor.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(tensor.view(np.uint16), weights[name].view(np.uint16))


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load(tmp_path / "nope")


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"architectures": ["MistralForCausalLM"]},
            "supported: Qwen2ForCausalLM, Qwen3ForCausalLM, LlamaForCausalLM",
        ),
        ({"auto_map": {"AutoModel": "x.Model"}}, "trust_remote_code"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn'"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope scaling type 'dynamic'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "'llama3' without low_freq"),
        ({"use_sliding_window": True, "sliding_window": 64}, "sliding-window attention"),
        ({"hidden_act": "gelu"}, "only 'silu'"),
    ],
)
def test_unsupported_config_is_refused(ckpt, tmp_path, change, message):
    copy_ckpt(ckpt, tmp_path / "c", change)
    with pytest.raises(ConfigError, match=message):
        load(tmp_path / "c")


def test_missing_tensor_is_named(ckpt, tmp_path):
    copy_ckpt(ckpt, tmp_path / "c", tensors={"model.layers.0.mlp.up_proj.weight": None})
    with pytest.raises(CheckpointError, match=r"missing tensors \['model.layers.0.mlp.up_proj"):
        load(tmp_path / "c")


def test_misshaped_tensor_names_both_shapes(ckpt, tmp_path):
    bad = {"model.layers.0.self_attn.k_proj.weight": np.zeros((16, 64), np.float32)}
    copy_ckpt(ckpt, tmp_path / "c", tensors=bad)
    with pytest.raises(
        CheckpointError, match=r"k_proj.weight has shape \(16, 64\), expected \(32, 64\)"
    ):
        load(tmp_path / "c")


def test_unexpected_tensor_is_named(ckpt, tmp_path):
    copy_ckpt(ckpt, tmp_path / "c", tensors={"model.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match="unexpected tensor model.extra.weight"):
        load(tmp_path / "c")


def test_pickle_only_checkpoint_is_refused(ckpt, tmp_path):
    (tmp_path / "config.json").write_text((ckpt / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load(tmp_path)


def test_published_qwen25_config_maps_to_the_published_parameter_count():
    """Qwen2.5-0.5B's config.json (as published) -> 494,032,768 parameters."""
    cfg = ModelConfig.from_hf(
        {
            "architectures": ["Qwen2ForCausalLM"],
            "hidden_act": "silu",
            "hidden_size": 896,
            "intermediate_size": 4864,
            "max_position_embeddings": 32768,
            "max_window_layers": 21,
            "num_attention_heads": 14,
            "num_hidden_layers": 24,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06,
            "rope_scaling": None,
            "rope_theta": 1000000.0,
            "sliding_window": 32768,
            "tie_word_embeddings": True,
            "torch_dtype": "bfloat16",
            "use_sliding_window": False,
            "vocab_size": 151936,
        }
    )
    assert (cfg.head_dim, cfg.rope_theta, cfg.checkpoint_dtype) == (64, 1e6, "bfloat16")
    assert cfg.num_params == 494_032_768
