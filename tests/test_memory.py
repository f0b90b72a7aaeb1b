"""The memory arithmetic behind the Cloud TPU recipe."""

from jaxthink.memory import R1_DISTILL_QWEN_1P5B, R1_DISTILL_QWEN_7B, RunShape, breakdown_gib, table
from jaxthink.models import ModelConfig


def test_parameter_counts_are_the_published_ones():
    assert ModelConfig.from_hf(R1_DISTILL_QWEN_1P5B).num_params == 1_777_088_000
    assert ModelConfig.from_hf(R1_DISTILL_QWEN_7B).num_params == 7_615_616_512


def test_kv_cache_is_per_token_bytes_times_tokens():
    cfg = ModelConfig.from_hf(R1_DISTILL_QWEN_1P5B)
    run = RunShape(prompts_per_step=1, group_size=1, prompt_len=1000, max_response=24)
    # 2 (k, v) x 28 layers x 2 kv heads x 128 dims x 2 bytes = 28,672 bytes per token.
    assert breakdown_gib(cfg, run)["KV cache (rollout)"] * 1024**3 == 28_672 * 1024


def test_table_says_which_slices_fit():
    text = table(ModelConfig.from_hf(R1_DISTILL_QWEN_1P5B), RunShape(), "1.5B")
    assert "| v5e-8 | 8 | 16 GiB |" in text and "| v5p-64 | 32 | 95 GiB |" in text
    assert text.count("| yes |") + text.count("| no |") == 8
