"""Meshes on 8 simulated CPU devices (in a subprocess, so XLA sees them before jax starts)."""

import json
import os
import subprocess
import sys

import pytest

from tests.hf_models import write_char_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_8_devices(module: str, *args) -> dict:
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    path = tmp_path_factory.mktemp("mesh")
    # 16 heads over 8 kv heads, MLP 256: every sharded axis divides a tensor axis of 8.
    write_char_checkpoint(
        path,
        seed=6,
        hidden_size=128,
        num_attention_heads=16,
        num_key_value_heads=8,
        intermediate_size=256,
    )
    return run_with_8_devices("tests.multidevice.sample_on_meshes", path)


@pytest.mark.parametrize("mesh", ["8x1x1", "2x2x2", "1x1x8", "1x4x2"])
def test_greedy_generation_on_a_mesh_equals_one_device(sampled, mesh):
    assert sampled["meshes"][mesh]["tokens"] == sampled["reference"]


def test_staged_samples_on_a_mesh_equal_one_device(sampled):
    """Nine prompts through 4 slots of a 2x2x2 mesh (with 4 staging rows) against 9 slots of
    one device."""
    assert sampled["staged"]["mesh"] == sampled["staged"]["alone"]
    assert len({len(t) for t in sampled["staged"]["alone"]}) > 1  # rows end at different steps


@pytest.mark.parametrize(
    "mesh, k_shard, up_shard",
    [
        ("8x1x1", [128, 8, 8], [128, 256]),
        ("2x2x2", [128, 4, 8], [128, 128]),
        ("1x1x8", [128, 1, 8], [128, 32]),
        ("1x4x2", [128, 4, 8], [128, 128]),
    ],
)
def test_each_device_holds_only_its_shard(sampled, mesh, k_shard, up_shard):
    m = sampled["meshes"][mesh]
    assert m["k_global"] == [128, 8, 8] and m["num_devices"] == 8
    assert m["k_shards"] == [k_shard] and m["up_shards"] == [up_shard]


def test_bad_meshes_are_refused_with_valid_choices(sampled):
    errors = sampled["errors"]
    assert "needs 3 devices" in errors["3x1x1"] and "nearest valid: data=" in errors["3x1x1"]
    assert "needs 12 devices" in errors["2x2x3"]
    assert "at most one -1" in errors["-1x-1x2"]
    assert "tensor=8 does not divide num_key_value_heads=2" in errors["kv_heads"]
    assert "valid tensor sizes for this model: 1, 2" in errors["kv_heads"]
