"""`python -m train bench --model DIR`: jaxthink's row on a tiny checkpoint, TRL's beside it (or
how to install it), and the side-by-side table."""

import json
import sys

import pytest

from tests.hf_models import write_char_checkpoint
from train import bench

TINY = ["--steps", "1", "--prompts", "2", "--group-size", "2", "--max-new-tokens", "8"]
COLUMNS = ["model", "params", "rows", "gen tok", "rollout s", "logprob s", "update s", "step s"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench_checkpoint")
    write_char_checkpoint(path, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    return path


def row(out: str, name: str) -> list[str]:
    found = [line.split() for line in out.splitlines() if line.startswith(name + " ")]
    assert len(found) == 1, out
    return found[0]


def test_model_bench_prints_jaxthinks_row_and_how_to_install_trl(checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` raises ImportError
    bench.main(["--model", str(checkpoint), *TINY])
    out = capsys.readouterr().out
    assert "2 prompts x 2 samples x 8 new tokens, 1 update(s) per step, kl_coef 0.0" in out
    header = next(line for line in out.splitlines() if line.startswith("model "))
    assert all(c in header for c in COLUMNS + ["cpu s", "tok/s", "peak GB", "step +GB"])
    cells = row(out, "jaxthink")
    assert len(cells) == 13 and cells[1].endswith("M") and cells[2] == "4"  # 2 prompts x 2
    assert 0 < float(cells[3]) <= 4 * 8  # generated tokens: at most rows x max_new_tokens
    assert all(float(c) >= 0 for c in cells[4:])
    assert bench.INSTALL_HINT in out and 'pip install -e ".[bench]"' in out
    assert "trl " not in out and "TRL / jaxthink" not in out


def test_trl_side_alone_says_how_to_install_it(checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "trl", None)
    bench.main(["--model", str(checkpoint), "--only", "trl"])
    assert capsys.readouterr().out.strip() == bench.INSTALL_HINT


def fake_result(name: str, seconds: float) -> dict:
    return {
        "model": name,
        "params_m": 19.89,
        "rows": 64,
        "seconds_rollout": seconds / 2,
        "seconds_logprobs": 0.0,
        "seconds_update": seconds / 2,
        "seconds": seconds,
        "generated_tokens": 4096.0,
        "rollout_tokens_per_s": 8192 / seconds,
        "tokens_per_s": 6144 / seconds,
        "cpu_seconds": 1.5 * seconds,
        "peak_rss_gb": 1.5,
        "step_rss_gb": 0.5,
    }


def test_side_by_side_table_and_ratio(checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(bench, "bench_jaxthink", lambda *a: fake_result("jaxthink", 4.0))
    monkeypatch.setattr(bench, "run_trl_subprocess", lambda args: fake_result("trl", 61.0))
    bench.main(["--model", str(checkpoint)])
    out = capsys.readouterr().out
    assert "8 prompts x 8 samples x 64 new tokens, 1 update(s) per step, kl_coef 0.0" in out
    assert row(out, "jaxthink")[7] == "4.000" and row(out, "trl")[7] == "61.000"
    assert "TRL / jaxthink step seconds: 15.25x (61.00 s / 4.00 s)" in out
    assert "CPU seconds: 15.25x (91.50 s / 6.00 s)" in out


def test_trl_arguments_follow_the_flags(checkpoint, monkeypatch):
    seen = {}

    def run(argv, **_):
        seen["argv"] = argv
        return type("Done", (), {"returncode": 0, "stdout": json.dumps({"seconds": 1.0})})

    monkeypatch.setattr(bench.subprocess, "run", run)
    monkeypatch.setattr(bench, "trl_installed", lambda: True)
    args = bench.resolve(
        bench.build_parser().parse_args(["--model", str(checkpoint), "--kl-coef", "0.01"])
    )
    assert bench.run_trl_subprocess(args) == {"seconds": 1.0}
    flags = dict(zip(seen["argv"][4::2], seen["argv"][5::2]))  # after python -m train bench
    assert flags["--only"] == "trl" and flags["--model"] == str(checkpoint)
    assert flags["--prompts"] == flags["--group-size"] == "8" and flags["--kl-coef"] == "0.01"
    assert flags["--max-new-tokens"] == "64" and flags["--mini-batches"] == "1"


def test_model_needs_a_checkpoint_directory(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--model", str(tmp_path)])


@pytest.mark.slow
def test_model_bench_beside_trl(checkpoint, capsys):
    """TRL's GRPOTrainer on the same tiny checkpoint and batch, one warm-up and one timed step."""
    pytest.importorskip("trl")
    bench.main(["--model", str(checkpoint), *TINY])
    out = capsys.readouterr().out
    assert row(out, "jaxthink")[2] == row(out, "trl")[2] == "4"
    assert "TRL / jaxthink step seconds: " in out
