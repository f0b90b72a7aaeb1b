"""Memory arithmetic for GRPO/DeGRPO on accelerator slices: will a run fit, and where does it go.

Per chip, with every large tensor sharded over all chips (FSDP x tensor for weights and optimizer,
batch x kv heads for the KV cache):
- policy parameters in fp32 (4 B), Adam moments (8 B) and gradients (4 B): 16 B per parameter;
- a bf16 copy of the policy for rollout (2 B) and the frozen reference model in bf16 (2 B);
- the rollout KV cache: 2 (k, v) x layers x kv_heads x head_dim x 2 B (bf16) per token, for
  prompts_per_step x G sequences of (prompt + max response) tokens;
- update activations with per-layer rematerialisation and gradient accumulation: the residual
  stream saved at every layer boundary (bf16) for one micro-batch of sequences, plus fp32 logits
  for LOGIT_CHUNK positions of each of its rows at a time (jaxthink.runs.logprobs).
The numbers are estimates to plan a slice, not a profiler's reading.
"""

from __future__ import annotations

import dataclasses

from jaxthink.models.config import ModelConfig
from jaxthink.models.shapes import SHAPES
from jaxthink.runs.logprobs import LOGIT_CHUNK

GIB = 1024**3
# name -> (chips, HBM GiB per chip)
SLICES = {
    "v5e-8": (8, 16),
    "v5e-16": (16, 16),
    "v5e-32": (32, 16),
    "v5e-64": (64, 16),
    "v5p-8": (4, 95),
    "v5p-16": (8, 95),
    "v5p-32": (16, 95),
    "v5p-64": (32, 95),
}

R1_DISTILL_QWEN_1P5B = SHAPES["r1-distill-qwen-1.5b"]
R1_DISTILL_QWEN_7B = SHAPES["r1-distill-qwen-7b"]


@dataclasses.dataclass(frozen=True)
class RunShape:
    prompts_per_step: int = 128
    group_size: int = 8
    prompt_len: int = 512
    max_response: int = 8192
    micro_batch: int = 16  # sequences per gradient-accumulation step, across the slice


def breakdown_gib(cfg: ModelConfig, run: RunShape) -> dict[str, float]:
    """Total GiB across the slice for each part of a step."""
    n = cfg.num_params
    seqs = run.prompts_per_step * run.group_size
    tokens = seqs * (run.prompt_len + run.max_response)
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
    saved = (
        run.micro_batch * (run.prompt_len + run.max_response) * cfg.num_layers * cfg.hidden_size * 2
    )
    logits_chunk = run.micro_batch * LOGIT_CHUNK * cfg.vocab_size * 4
    return {
        "train state (fp32 params, Adam, grads)": 16 * n / GIB,
        "rollout + reference weights (bf16)": 4 * n / GIB,
        "KV cache (rollout)": tokens * kv_per_token / GIB,
        "activations (remat, one micro-batch)": (saved + logits_chunk) / GIB,
    }


def table(cfg: ModelConfig, run: RunShape, name: str) -> str:
    parts = breakdown_gib(cfg, run)
    total = sum(parts.values())
    lines = [
        f"**{name}** ({cfg.num_params / 1e9:.2f}B parameters; {run.prompts_per_step} prompts x "
        f"G={run.group_size}, {run.prompt_len}+{run.max_response} tokens)",
        "",
        "| part | GiB (whole slice) |",
        "|---|---|",
        *[f"| {k} | {v:,.1f} |" for k, v in parts.items()],
        f"| **total** | **{total:,.1f}** |",
        "",
        "| slice | chips | HBM/chip | need/chip | fits |",
        "|---|---|---|---|---|",
    ]
    for slice_name, (chips, hbm) in SLICES.items():
        need = total / chips
        lines.append(
            f"| {slice_name} | {chips} | {hbm} GiB | {need:,.1f} GiB | "
            f"{'yes' if need < 0.9 * hbm else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    for name, c in (
        ("DeepSeek-R1-Distill-Qwen-1.5B", R1_DISTILL_QWEN_1P5B),
        ("DeepSeek-R1-Distill-Qwen-7B", R1_DISTILL_QWEN_7B),
    ):
        print(table(ModelConfig.from_hf(c), RunShape(), name), end="\n\n")


if __name__ == "__main__":
    main()
