"""The model configuration: a typed view of a Hugging Face `config.json` for Qwen2, Qwen3 and
Llama (Llama 3.x, DeepSeek-R1-Distill-Llama: the same decoder without the q/k/v bias, with
Llama 3's RoPE frequency scaling).

`ModelConfig.from_hf` accepts exactly what the port implements and refuses everything else with a
message naming the field, the value found and what would be accepted.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

# config.json `architectures` -> the family name the model code switches on.
ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "LlamaForCausalLM": "llama",
}


class ConfigError(ValueError):
    """A config.json the port cannot run faithfully."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str  # a key of ARCHITECTURES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2: q/k/v projections carry a bias
    o_bias: bool  # Qwen3 with attention_bias: every projection, o included
    qk_norm: bool  # Qwen3: RMSNorm over head_dim on queries and keys before RoPE
    max_position_embeddings: int
    checkpoint_dtype: str = "float32"  # the dtype the weights were stored in; export keeps it
    # RoPE scaling: Llama 3's (factor, low_freq_factor, high_freq_factor, original context), or
    # linear (positions divided by factor: a 1-tuple)
    rope_scaling: tuple | None = None
    mlp_bias: bool = False  # Llama with mlp_bias: gate, up and down projections carry a bias
    hf_config: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def family(self) -> str:
        return ARCHITECTURES[self.architecture]

    def inv_freq(self):
        """RoPE inverse frequencies [head_dim / 2] (numpy float32), scaled: linear divides them
        all by `factor`; Llama 3 divides the wavelengths beyond the original context by it and
        interpolates those between the high- and low-frequency bounds smoothly."""
        dim = self.head_dim
        inv = 1.0 / (self.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        if self.rope_scaling is None:
            return inv
        if len(self.rope_scaling) == 1:
            return (inv / self.rope_scaling[0]).astype(np.float32)
        factor, low, high, context = self.rope_scaling
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > context / low, inv / factor, inv)
        smooth = (context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < context / high) & ~(wavelen > context / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)

    @property
    def num_params(self) -> int:
        d, h, k, hd = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * hd * (h + 2 * k) + h * hd * d
        attn += hd * (h + 2 * k) * self.qkv_bias + d * self.o_bias + 2 * hd * self.qk_norm
        mlp = 3 * d * self.intermediate_size + (2 * self.intermediate_size + d) * self.mlp_bias
        layer = attn + mlp + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.num_layers * layer + self.vocab_size * d + d + head

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"{path}: no config.json (a Hugging Face checkpoint directory has one)"
            )
        return cls.from_hf(json.loads(path.read_text()), source=str(path))

    @classmethod
    def from_hf(cls, c: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Validates an HF config dict and maps it onto the port's fields."""
        arch = _architecture(c, source)
        if c.get("auto_map") or c.get("trust_remote_code"):
            raise ConfigError(
                f"{source}: needs trust_remote_code (auto_map={c.get('auto_map')}); jaxthink runs "
                "only the built-in Qwen2/Qwen3 code, never code shipped with a checkpoint"
            )
        if c.get("hidden_act", "silu") != "silu":
            raise ConfigError(
                f"{source}: hidden_act={c['hidden_act']!r}; only 'silu' is implemented"
            )
        _check_sliding_window(c, source)
        heads = c["num_attention_heads"]
        kv_heads = c.get("num_key_value_heads") or heads
        if heads % kv_heads:
            raise ConfigError(
                f"{source}: num_attention_heads={heads} is not a multiple of "
                f"num_key_value_heads={kv_heads}"
            )
        qwen3, llama = arch == "Qwen3ForCausalLM", arch == "LlamaForCausalLM"
        default_head_dim = 128 if qwen3 else c["hidden_size"] // heads
        attention_bias = bool(c.get("attention_bias", False))
        theta, scaling = _rope(c, source)
        return cls(
            architecture=arch,
            vocab_size=c["vocab_size"],
            hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"],
            num_layers=c["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=c.get("head_dim") or default_head_dim,
            rope_theta=float(theta),
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            qkv_bias=attention_bias if qwen3 or llama else True,
            o_bias=attention_bias if qwen3 or llama else False,
            qk_norm=qwen3,
            max_position_embeddings=c.get("max_position_embeddings", 32768),
            checkpoint_dtype=str(c.get("dtype") or c.get("torch_dtype") or "float32"),
            rope_scaling=scaling,
            mlp_bias=bool(c.get("mlp_bias", False)) and llama,
            hf_config=dict(c),
        )

    def to_hf(self) -> dict[str, Any]:
        """The config.json to export: the original one when loaded from HF, else a fresh one."""
        c = dict(self.hf_config)
        c.update(
            architectures=[self.architecture],
            model_type=self.family,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            hidden_act="silu",
            dtype=self.checkpoint_dtype,
        )
        c.pop("torch_dtype", None)
        if self.family in ("qwen3", "llama"):
            c["attention_bias"] = self.o_bias
        if self.family == "llama":
            c["mlp_bias"] = self.mlp_bias
        scaling = self.rope_scaling
        if scaling is not None and not (c.get("rope_scaling") or c.get("rope_parameters")):
            keys = ("factor", "low_freq_factor", "high_freq_factor")
            c["rope_scaling"] = dict(
                rope_type="linear" if len(scaling) == 1 else "llama3",
                **dict(zip(keys, scaling[:3], strict=False)),
                **({"original_max_position_embeddings": scaling[3]} if len(scaling) == 4 else {}),
            )
        return c


def _architecture(c: dict, source: str) -> str:
    archs = c.get("architectures") or []
    for arch in archs:
        if arch in ARCHITECTURES:
            return arch
    raise ConfigError(
        f"{source}: unsupported architectures={archs}; supported: {', '.join(ARCHITECTURES)}"
    )


def _rope(c: dict, source: str) -> tuple[float, tuple | None]:
    """(rope_theta, scaling or None) from either the classic keys or transformers 5's
    `rope_parameters`; the scaling as `ModelConfig.rope_scaling` holds it."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type") or scaling.get("type") or params.get("rope_type")
    if rope_type not in (None, "default", "linear", "llama3"):
        raise ConfigError(
            f"{source}: rope scaling type {rope_type!r} is not implemented; "
            "accepted: rope_scaling null, rope_type 'default', 'linear' or 'llama3'"
        )
    theta = params.get("rope_theta") or c.get("rope_theta") or 10000.0
    given = {**params, **scaling}
    if rope_type == "linear":
        if "factor" not in given:
            raise ConfigError(f"{source}: rope_type 'linear' without factor")
        return theta, (float(given["factor"]),)
    if rope_type != "llama3":
        return theta, None
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    if missing := [k for k in keys if k not in given]:
        raise ConfigError(f"{source}: rope_type 'llama3' without {', '.join(missing)}")
    factor, low, high, context = (given[k] for k in keys)
    if not high > low:
        raise ConfigError(
            f"{source}: llama3 rope scaling needs high_freq_factor > low_freq_factor "
            f"(got {high} and {low})"
        )
    return theta, (float(factor), float(low), float(high), int(context))


def _check_sliding_window(c: dict, source: str) -> None:
    layer_types = c.get("layer_types") or []
    if c.get("use_sliding_window") or "sliding_attention" in layer_types:
        raise ConfigError(
            f"{source}: sliding-window attention (use_sliding_window={c.get('use_sliding_window')}, "
            f"sliding_window={c.get('sliding_window')}) is not implemented; "
            "accepted: use_sliding_window false (full attention in every layer)"
        )
