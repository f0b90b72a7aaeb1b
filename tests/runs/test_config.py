"""Run configs: YAML into typed dataclasses, includes, overrides, and the errors they give."""

from pathlib import Path

import pytest
import yaml

from jaxthink.rl import LossConfig
from jaxthink.rl.config import RLConfig
from jaxthink.runs.config_file import ConfigError, load_config, to_dict
from jaxthink.sft.config import SFTConfig
from train.__main__ import main

CONFIGS = Path(__file__).parents[2] / "configs"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_no_file_gives_the_defaults():
    assert load_config(SFTConfig) == SFTConfig()
    assert load_config(RLConfig).loss == LossConfig()


def test_yaml_sections_includes_and_types(tmp_path):
    (tmp_path / "models").mkdir()
    write(tmp_path / "models" / "small.yaml", "hidden_size: 32\nnum_layers: 1\n")
    path = write(
        tmp_path / "run.yaml",
        "model: models/small.yaml\noptim:\n  lr: 1e-3\ndata:\n  levels: [1, 2]\nsteps: 7\n",
    )
    cfg = load_config(SFTConfig, path)
    assert cfg.model.hidden_size == 32 and cfg.model.num_layers == 1
    assert cfg.optim.lr == 1e-3  # YAML reads `1e-3` as a string; the float field parses it
    assert cfg.data.levels == (1, 2)
    assert cfg.steps == 7


def test_overrides_are_typed_by_their_field(tmp_path):
    cfg = load_config(
        RLConfig,
        None,
        [
            "optim.lr=3e-4",
            "rollout.group_size=4",
            "data.levels=1,3",
            "resume=false",
            "loss.kind=grpo",
            "normalize_std=yes",
        ],
    )
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.rollout.group_size == 4
    assert cfg.data.levels == (1, 3)
    assert cfg.resume is False and cfg.normalize_std is True
    assert cfg.loss.kind == "grpo"


def test_an_override_can_name_a_section_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "m.yaml", "hidden_size: 48\n")
    assert load_config(SFTConfig, None, ["model=m.yaml"]).model.hidden_size == 48


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "bogus: 1\n",
            "unknown config key 'bogus'; valid keys here: run_dir, resume, on_change, steps",
        ),
        ("optim:\n  learning_rate: 1\n", "unknown config key 'optim.learning_rate'; valid keys"),
        ("steps: many\n", "steps: expected int, got 'many'"),
        ("resume: maybe\n", "resume: expected a bool"),
        ("data:\n  levels: 3\n", "data.levels: expected a list"),
        ("optim:\n  schedule: linear\n", "schedule 'linear'; accepted: cosine, constant"),
        ("model: nowhere.yaml\n", "model: 'nowhere.yaml' is not a mapping nor a YAML file"),
    ],
)
def test_bad_files_name_the_key_and_what_is_accepted(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        load_config(SFTConfig, write(tmp_path / "c.yaml", text))


def test_unknown_nested_key_lists_that_sections_keys():
    with pytest.raises(ConfigError) as err:
        load_config(RLConfig, None, ["rollout.samples=4"])
    assert "'rollout.samples'" in str(err.value)
    assert "group_size, prompts_per_step, temperature" in str(err.value)


def test_rl_checks_span_sections():
    with pytest.raises(ConfigError, match="mini_batches=3 does not divide the 1024 rows"):
        load_config(RLConfig, None, ["mini_batches=3"])
    with pytest.raises(ConfigError, match="LossConfig.kind must be one of"):
        load_config(RLConfig, None, ["loss.kind=ppo"])
    with pytest.raises(ConfigError, match="unknown mode"):
        load_config(RLConfig, None, ["rollout.mode=thinkfast"])
    with pytest.raises(ConfigError, match=r"response_baseline='prompt': .*\('group', 'mode'\)"):
        load_config(RLConfig, None, ["response_baseline=prompt"])


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(RLConfig, None, ["optim.lr=1e-4", "data.levels=[2]", "loss.alpha=0.5"])
    path = write(tmp_path / "saved.yaml", yaml.safe_dump(to_dict(cfg)))
    assert load_config(RLConfig, path) == cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cls = RLConfig if path.name.startswith("rl") else SFTConfig
    assert isinstance(load_config(cls, path), cls)


def test_cli_prints_the_resolved_config(capsys):
    main(["sft", "--config", str(CONFIGS / "sft_tiny.yaml"), "--print-config", "steps=3"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["steps"] == 3 and printed["model"]["hidden_size"] == 64


def test_cli_reports_config_errors_with_exit_status_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["rl", "rollout.group_size=x"])
    assert exit_.value.code == 2
    assert "rollout.group_size: expected int, got 'x'" in capsys.readouterr().err
