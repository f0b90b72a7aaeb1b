"""Hugging Face checkpoints in and out: safetensors <-> the NNX model, tensor by tensor.

`PARAM_RULES` is the whole mapping: an HF tensor name pattern -> the parameter path in `Qwen`
and how to lay it out. HF `Linear` weights are [out, in]; ours are [in..., out...] with heads
split out, so a linear weight becomes `W.T.reshape(target)`, and exports as the inverse.

Loading memory-maps each safetensors file and converts one tensor at a time, placing it on its
device (or sharding) before reading the next: the weights are never held twice.
"""

from __future__ import annotations

import json
import math
import re
import struct as _struct
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from jaxthink.models.config import ConfigError, ModelConfig
from jaxthink.models.qwen import Qwen

# (HF name, parameter path, kind, input dims of our kernel); "{i}" is the layer index, whose
# parameters live under ("layers", i). kind: "linear" = transpose + reshape, "flat" = reshape
# (HF stores biases flat), "copy" = same shape.
PARAM_RULES: list[tuple[str, tuple[str, ...], str, int]] = [
    ("model.embed_tokens.weight", ("embed",), "copy", 0),
    ("model.norm.weight", ("final_norm", "scale"), "copy", 0),
    ("lm_head.weight", ("lm_head",), "linear", 1),
    ("model.layers.{i}.input_layernorm.weight", ("attn_norm", "scale"), "copy", 0),
    ("model.layers.{i}.post_attention_layernorm.weight", ("mlp_norm", "scale"), "copy", 0),
    ("model.layers.{i}.self_attn.q_proj.weight", ("attn", "q"), "linear", 1),
    ("model.layers.{i}.self_attn.k_proj.weight", ("attn", "k"), "linear", 1),
    ("model.layers.{i}.self_attn.v_proj.weight", ("attn", "v"), "linear", 1),
    ("model.layers.{i}.self_attn.o_proj.weight", ("attn", "o"), "linear", 2),
    ("model.layers.{i}.self_attn.q_proj.bias", ("attn", "q_bias"), "flat", 0),
    ("model.layers.{i}.self_attn.k_proj.bias", ("attn", "k_bias"), "flat", 0),
    ("model.layers.{i}.self_attn.v_proj.bias", ("attn", "v_bias"), "flat", 0),
    ("model.layers.{i}.self_attn.o_proj.bias", ("attn", "o_bias"), "flat", 0),
    ("model.layers.{i}.self_attn.q_norm.weight", ("attn", "q_norm", "scale"), "copy", 0),
    ("model.layers.{i}.self_attn.k_norm.weight", ("attn", "k_norm", "scale"), "copy", 0),
    ("model.layers.{i}.mlp.gate_proj.weight", ("mlp", "gate"), "linear", 1),
    ("model.layers.{i}.mlp.up_proj.weight", ("mlp", "up"), "linear", 1),
    ("model.layers.{i}.mlp.down_proj.weight", ("mlp", "down"), "linear", 1),
    ("model.layers.{i}.mlp.gate_proj.bias", ("mlp", "gate_bias"), "flat", 0),
    ("model.layers.{i}.mlp.up_proj.bias", ("mlp", "up_bias"), "flat", 0),
    ("model.layers.{i}.mlp.down_proj.bias", ("mlp", "down_bias"), "flat", 0),
]
_RULE_PATTERNS = [
    (re.compile(re.escape(name).replace(r"\{i\}", r"(\d+)")), path, kind, n)
    for name, path, kind, n in PARAM_RULES
]
_IGNORED = re.compile(r".*rotary_emb\.inv_freq")

_ST_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F64": np.float64,
}
_HF_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class CheckpointError(ValueError):
    """A checkpoint directory the loader cannot read faithfully."""


def _match(name: str) -> tuple[tuple, str, int] | None:
    """HF tensor name -> (parameter path, kind, input dims), or None if no rule matches."""
    for pattern, path, kind, in_ndim in _RULE_PATTERNS:
        m = pattern.fullmatch(name)
        if m:
            prefix = ("layers", int(m.group(1))) if m.groups() else ()
            return prefix + path, kind, in_ndim
    return None


def _hf_rule(path: tuple) -> tuple[str, str, int]:
    """Parameter path -> (HF tensor name, kind, input dims): the inverse of `_match`."""
    in_layer = path[0] == "layers"
    key = path[2:] if in_layer else path
    for name, rule_path, kind, in_ndim in PARAM_RULES:
        if rule_path == key and ("{i}" in name) == in_layer:
            return (name.format(i=path[1]) if in_layer else name), kind, in_ndim
    raise KeyError(f"no HF name for parameter {path}")


def _param_at(model: Qwen, path: tuple) -> nnx.Param | None:
    node = model
    for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key, None)
        if node is None:
            return None
    return node


def hf_to_param(tensor: np.ndarray, kind: str, shape: tuple) -> np.ndarray:
    return tensor.T.reshape(shape) if kind == "linear" else tensor.reshape(shape)


def param_to_hf(value: np.ndarray, kind: str, in_ndim: int) -> np.ndarray:
    if kind == "linear":
        return value.reshape(math.prod(value.shape[:in_ndim]), -1).T
    return value.reshape(-1) if kind == "flat" else value


# ----------------------------------------------------------------------------- reading


def safetensors_files(directory: Path) -> list[Path]:
    """The checkpoint's safetensors files, from the index when sharded. Refuses pickle-only dirs."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [directory / f for f in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are not there: {missing}")
        return files
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(directory.glob("*.safetensors"))
    if found:
        return found
    if list(directory.glob("*.bin")) or list(directory.glob("*.pt")):
        raise CheckpointError(
            f"{directory} has only pickle weights (*.bin/*.pt); jaxthink reads safetensors only "
            "(convert with transformers: model.save_pretrained(dir, safe_serialization=True))"
        )
    raise CheckpointError(
        f"{directory}: no model.safetensors or model.safetensors.index.json in this directory"
    )


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, memory-mapped array) for each tensor of one file, without loading the file."""
    with open(path, "rb") as f:
        (header_len,) = _struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    for name, info in header.items():
        if info["dtype"] not in _ST_DTYPES:
            raise CheckpointError(
                f"{path}: tensor {name} has dtype {info['dtype']}; "
                f"accepted: {', '.join(_ST_DTYPES)}"
            )
        start, end = info["data_offsets"]
        dtype = _ST_DTYPES[info["dtype"]]
        yield name, data[start:end].view(dtype).reshape(info["shape"])


def load_params(
    directory: str | Path,
    cfg: ModelConfig,
    *,
    dtype=jnp.float32,
    place: Callable[[np.ndarray, nnx.Param], jax.Array] | None = None,
) -> Qwen:
    """Builds the model from the checkpoint's tensors.

    `place(array, param)` puts one tensor on its device(s); the default is the default device.
    `jaxthink.sharding.placer` `device_put`s each straight onto its parameter's sharding.
    """
    directory = Path(directory)
    model = nnx.eval_shape(lambda: Qwen(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    place = place or (lambda x, param: jnp.asarray(x))
    loaded: set[tuple] = set()
    for file in safetensors_files(directory):
        for name, tensor in read_safetensors(file):
            if _IGNORED.fullmatch(name):
                continue
            rule = _match(name)
            if rule is None:
                raise CheckpointError(f"{file}: unexpected tensor {name} for {cfg.architecture}")
            path, kind, _ = rule
            if path == ("lm_head",) and cfg.tie_word_embeddings:
                continue  # tied: the head is the embedding
            param = _param_at(model, path)
            if param is None:
                raise CheckpointError(
                    f"{file}: tensor {name} has no place in this config "
                    f"({cfg.architecture}, tie_word_embeddings={cfg.tie_word_embeddings})"
                )
            target = param.get_value()
            expected = tuple(param_to_hf(np.empty(target.shape, np.int8), kind, rule[2]).shape)
            if tuple(tensor.shape) != expected:
                raise CheckpointError(
                    f"{file}: tensor {name} has shape {tuple(tensor.shape)}, "
                    f"expected {expected} from config.json"
                )
            array = hf_to_param(np.asarray(tensor).astype(target.dtype), kind, target.shape)
            param.set_value(place(array, param))
            loaded.add(path)
    missing = [_hf_rule(p)[0] for p, _ in _param_paths(model) if p not in loaded]
    if missing:
        raise CheckpointError(f"{directory}: missing tensors {missing[:8]} (of {len(missing)})")
    return model


def _param_paths(model: Qwen) -> list[tuple[tuple, nnx.Param]]:
    return [(tuple(p), v) for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)]


# ----------------------------------------------------------------------------- writing


def export_hf(
    model: Qwen,
    directory: str | Path,
    *,
    dtype: str | None = None,
    tokenizer=None,
    max_shard_bytes: int = 4 << 30,
) -> Path:
    """Writes config.json + safetensors (sharded with an index past `max_shard_bytes`).

    `dtype` defaults to the dtype the checkpoint was loaded from, so HF -> jaxthink -> HF is exact.
    """
    cfg: ModelConfig = model.cfg
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = dtype or cfg.checkpoint_dtype
    if dtype not in _HF_DTYPES:
        raise ConfigError(f"export dtype {dtype!r}; accepted: {', '.join(_HF_DTYPES)}")
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for path, param in _param_paths(model):
        name, kind, in_ndim = _hf_rule(path)
        tensor = param_to_hf(np.asarray(jax.device_get(param[...])), kind, in_ndim)
        tensor = np.ascontiguousarray(tensor.astype(_HF_DTYPES[dtype]))
        if size + tensor.nbytes > max_shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    _write_shards(shards, directory)
    config = dict(cfg.to_hf(), dtype=dtype)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def _write_shards(shards: list[dict[str, np.ndarray]], directory: Path) -> None:
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], directory / "model.safetensors", metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / name, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.nbytes for s in shards for t in s.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
