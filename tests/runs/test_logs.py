"""`python -m train plot`: one metric of several runs over steps, from their metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from train.__main__ import main


def _run(path, ratios):
    path.mkdir()
    lines = [json.dumps({"step": i + 1, "think_ratio": r}) for i, r in enumerate(ratios)]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


def test_plot_draws_one_line_per_run(tmp_path, capsys):
    a = _run(tmp_path / "degrpo", [0.1, 0.5, 0.3])
    b = _run(tmp_path / "grpo", [0.1, 0.9, 1.0])
    out = tmp_path / "ratio.png"
    main(["plot", str(a), f"vanilla={b}", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    assert f"wrote {out}" in capsys.readouterr().out


def test_plot_refuses_a_directory_without_metrics_and_an_unlogged_key(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["plot", str(tmp_path / "none"), "--out", str(tmp_path / "x.png")])
    assert "no metrics.jsonl" in capsys.readouterr().err
    run = _run(tmp_path / "run", [0.5])
    with pytest.raises(SystemExit):
        main(["plot", str(run), "--key", "reward", "--out", str(tmp_path / "x.png")])
    assert "no run logged 'reward'" in capsys.readouterr().err
