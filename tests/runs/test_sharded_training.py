"""Training on meshes and across processes (each in subprocesses, so XLA sees its devices first).

- On 8 simulated CPU devices, one SFT step and one DeGRPO update on the meshes 8x1x1, 2x2x2,
  1x1x8 and 1x4x2 give the parameters of one device, and each device holds only its shard of the
  parameters and of their optimizer moments.
- Two processes joined by `jax.distributed` (2 CPU devices each, FSDP across them): one SFT step
  with the data split by process equals one process's step on the whole batch; an on-policy
  round (rollout, log-probs, update) equals one process's; the checkpoint both wrote restores in
  one process; process 0's export is the trained model.
- Bad `distributed` and `mesh` settings are refused, naming what is accepted.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from jaxthink.data.records import record_stream
from jaxthink.distributed import DistributedConfig, join
from jaxthink.runs import ConfigError, load_config
from jaxthink.runs.logs import MetricsLog
from jaxthink.sft.config import SFTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Quick XLA:CPU compiles (the programs are tiny); both sides of every comparison use them.
FAST_COMPILE = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false"
)
MESHES = ["8x1x1", "2x2x2", "1x1x8", "1x4x2"]


def environment(devices: int) -> dict:
    flags = f"--xla_force_host_platform_device_count={devices} " if devices > 1 else ""
    return dict(os.environ, XLA_FLAGS=flags + FAST_COMPILE, JAX_PLATFORMS="cpu")


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.multidevice.train_on_meshes", tmp_path_factory.mktemp("m")],
        cwd=ROOT,
        env=environment(8),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return last_json(proc.stdout)


def test_the_steps_move_the_parameters(meshes):
    assert meshes["moved"]["sft"] > 1e-4 and meshes["moved"]["rl"] > 1e-4


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("step", ["sft", "rl"])
def test_a_step_on_a_mesh_equals_one_device(meshes, mesh, step):
    diff = meshes["meshes"][mesh][step]
    assert diff["params"] < 1e-6  # measured: at most 6e-9
    assert diff["mu"] < 1e-7  # Adam's first moment, 0.1 x the gradient; measured: at most 1e-8
    assert diff["loss"] < 1e-5 and diff["grad_norm"] < 1e-5


@pytest.mark.parametrize("mesh", MESHES)
def test_logprobs_on_a_mesh_equal_one_device(meshes, mesh):
    assert meshes["meshes"][mesh]["logprobs"] < 1e-5  # measured: at most 1e-6


@pytest.mark.parametrize(
    "mesh, q_shard, up_shard",
    [
        ("8x1x1", [32, 8, 4], [32, 64]),
        ("2x2x2", [16, 4, 4], [16, 32]),
        ("1x1x8", [32, 1, 4], [32, 8]),
        ("1x4x2", [8, 4, 4], [8, 32]),
    ],
)
def test_each_device_holds_only_its_shard_of_the_training_state(meshes, mesh, q_shard, up_shard):
    m = meshes["meshes"][mesh]
    assert m["q_global"] == [32, 8, 4] and m["num_devices"] == 8
    assert m["q_shards"] == [q_shard] and m["q_mu_shards"] == [q_shard]
    assert m["up_shards"] == [up_shard]


def test_batches_that_do_not_split_over_the_mesh_are_refused(meshes):
    errors = meshes["errors"]
    assert (
        "micro-batch of 4 rows does not split over the mesh's data x fsdp = 8"
        in errors["micro_batch"]
    )
    assert "set micro_batch_size to a multiple of 8" in errors["micro_batch"]
    assert "a batch of 12 rows does not split over" in errors["rows"]
    assert "use a multiple of 8" in errors["rows"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_together(workers, timeout: float = 600) -> None:
    """Waits for all workers; once one fails (or time runs out) the others, which would wait
    for it at their next collective, are stopped."""
    deadline = time.monotonic() + timeout
    while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
        if any(w.poll() for w in workers):
            break
        time.sleep(0.2)
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("two")
    port = str(free_port())
    module = "tests.multidevice.train_two_processes"
    logs = [directory / f"worker{i}.log" for i in range(2)]
    workers = []
    for i, log in enumerate(logs):
        with log.open("w") as out:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", module, "worker", str(i), port, str(directory)],
                    cwd=ROOT,
                    env=environment(2),
                    stdout=subprocess.DEVNULL,
                    stderr=out,
                )
            )
    wait_together(workers)
    for worker, log in zip(workers, logs):
        assert worker.returncode == 0, log.read_text()[-4000:]
    proc = subprocess.run(
        [sys.executable, "-m", module, "check", str(directory)],
        cwd=ROOT,
        env=environment(1),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return last_json(proc.stdout)


def test_sft_step_with_the_data_split_by_process_equals_one_process(two_processes):
    assert two_processes["shares_differ"]  # each process read its own rows
    assert two_processes["moved"] > 1e-4
    assert two_processes["sft"] < 1e-6 and two_processes["sft_mu"] < 1e-7  # measured 4e-9, 2e-9


def test_rl_round_across_processes_equals_one_process(two_processes):
    assert two_processes["rl_moved"] > 1e-6
    assert two_processes["rl"] < 1e-6  # measured 4e-9
    metrics = two_processes["rl_metrics"]
    assert metrics["reward"][0] == metrics["reward"][1]  # the same samples
    assert metrics["think_ratio"][0] == metrics["think_ratio"][1]
    assert abs(metrics["loss"][0] - metrics["loss"][1]) < 1e-5


def test_each_process_holds_its_shard(two_processes):
    # fsdp=2 across the processes, tensor=2 within each: q [32, 8, 4] -> [16, 4, 4] per device
    assert two_processes["q_global"] == [32, 8, 4] and two_processes["q"] == [[16, 4, 4]]


def test_checkpoint_written_by_two_processes_restores_in_one(two_processes):
    assert two_processes["restored"] == 0.0
    assert two_processes["data_states"] == {
        "process_0-of-2.json": {"shard": [0, 2]},
        "process_1-of-2.json": {"shard": [1, 2]},
    }
    # one process cannot continue two processes' data positions: it gets none
    assert two_processes["data_state"] is None


def test_export_from_two_processes_is_the_trained_model(two_processes):
    assert two_processes["exported"] == 0.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["distributed.initialize=maybe"],
            "distributed.initialize 'maybe'; accepted: auto, yes, no",
        ),
        (["distributed.coordinator=node0"], "expected host:port of process 0"),
        (["distributed.coordinator=node0:99999"], "port 1 .. 65535"),
        (["distributed.coordinator=node0:8476"], "num_processes (>= 1) and distributed.process_id"),
        (["distributed.process_id=1"], "without distributed.coordinator"),
        (["distributed.num_processes=-2"], "num_processes must be >= 1 (0: from the cluster)"),
        (["mesh.data=0"], "sizes must be positive, with at most one -1"),
        (["mesh.data=-1", "mesh.fsdp=-1"], "sizes must be positive, with at most one -1"),
    ],
)
def test_bad_distributed_and_mesh_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, None, overrides)
    assert message in str(e.value)


def test_process_ids_must_be_below_the_process_count():
    overrides = ["distributed.coordinator=node0:8476", "distributed.num_processes=2"]
    with pytest.raises(
        ConfigError, match=r"process_id=2 is not below num_processes=2; accepted: 0 .. 1"
    ):
        load_config(SFTConfig, None, [*overrides, "distributed.process_id=2"])
    with pytest.raises(ConfigError, match="initialize is 'no' but distributed.coordinator is set"):
        load_config(
            SFTConfig, None, [*overrides, "distributed.process_id=1", "distributed.initialize=no"]
        )


def test_a_run_joins_no_multi_host_run_unless_asked(monkeypatch):
    for name in (
        "JAX_COORDINATOR_ADDRESS",
        "MEGASCALE_COORDINATOR_ADDRESS",
        "TPU_WORKER_HOSTNAMES",
    ):
        monkeypatch.delenv(name, raising=False)
    assert join(DistributedConfig()) is False
    assert join(DistributedConfig(initialize="no")) is False
    cfg = load_config(SFTConfig)
    assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (1, 1, 1)


def test_data_shares_do_not_overlap_and_cover_the_items():
    items = list(range(10))
    shares = [list(record_stream(items, seed=0, shard=(i, 3))[:3]) for i in range(3)]
    whole = list(record_stream(items, seed=0)[:9])
    assert sorted(sum(shares, [])) == sorted(whole)
    assert [s[0] for s in shares] == whole[:3]
    with pytest.raises(ValueError, match="data shard 3 of 3: expected 0 <= index < count"):
        record_stream(items, seed=0, shard=(3, 3))


def test_only_an_enabled_metrics_log_writes(tmp_path):
    quiet = MetricsLog(tmp_path / "quiet.jsonl", enabled=False)
    quiet.write({"step": 1, "loss": 1.0})
    assert not (tmp_path / "quiet.jsonl").exists()
    log = MetricsLog(tmp_path / "m.jsonl")
    log.write({"step": 1, "loss": 1.0})
    assert (tmp_path / "m.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'
