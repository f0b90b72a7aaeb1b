"""The hybrid study (`python -m infer hybrid-study`): its runs, the gap recovered, and the report
it writes, on the shipped demo pair."""

import json

import pytest

from infer import cli
from jaxthink.hybrid.study import gap_recovered, grid_name, study_runs


def test_runs_and_names():
    runs = study_runs([(0.0,), (0.1, 0.2, 0.3)], (0.5, 1.0))
    assert [r.name for r in runs] == [
        "base",
        "thinking",
        "hybrid_0",
        "hybrid_0.1-0.3x3",
        "bias_only_0.5-1x2",
        "random_latent_0.5-1x2",
    ]
    assert grid_name((1.0, 2.0, 4.0, 8.0)) == "1-8x4"
    with pytest.raises(ValueError, match="share a name"):
        study_runs([(0.1, 0.3), (0.1, 0.3)], (1.0,))


def test_gap_recovered():
    assert gap_recovered(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert gap_recovered(0.1, 0.2, 0.8) == pytest.approx(-1 / 6)
    assert gap_recovered(0.5, 0.8, 0.8) is None  # no gap to recover


def test_the_study_on_the_shipped_pair(tmp_path, capsys):
    out = tmp_path / "study"
    argv = [
        "hybrid-study",
        "--out",
        str(out),
        "--problems",
        "1",
        "--grids",
        "0;1",
        "--main-grid",
        "1",
        "--max-new-tokens",
        "48",
        "--slots",
        "6",
    ]
    cli.main(argv)
    study = json.loads((out / "study.json").read_text())
    runs = study["runs"]
    assert list(runs) == [
        "base",
        "thinking",
        "hybrid_0",
        "hybrid_1",
        "bias_only_1",
        "random_latent_1",
    ]
    assert study["levels"] == ["1", "2", "3", "4", "5", "6"]
    # Coefficient 0 is the base model alone: the same answers, so the same accuracy per level.
    base = [json.loads(line) for line in (out / "base" / "samples.jsonl").open()]
    control = [json.loads(line) for line in (out / "hybrid_0" / "samples.jsonl").open()]
    assert [r["text"] for r in control] == [r["text"] for r in base]
    assert runs["hybrid_0"]["levels"] == {
        lv: {**x, "steered_fraction": runs["hybrid_0"]["levels"][lv]["steered_fraction"]}
        for lv, x in runs["base"]["levels"].items()
    }
    assert runs["base"]["steered_fraction"] is None
    assert runs["hybrid_1"]["steered_fraction"] > 0
    for name in ("study.md", "steered.png", "gap_by_level.png", "problems.jsonl"):
        assert (out / name).is_file()
    assert "| hybrid_1 | 1 |" in capsys.readouterr().out
    cli.main(argv)  # a rerun resumes every run: nothing is generated again
    assert json.loads((out / "study.json").read_text()) == study
