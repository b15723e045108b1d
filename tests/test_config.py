"""The config tree: composition, overrides, and errors that name the key, the file and the closest valid key."""

from pathlib import Path

import pytest
import yaml

from e2erec.config import (
    CONFIG_ROOT,
    ConfigError,
    RunConfig,
    from_dict,
    load_config,
    load_run_config,
    save_resolved,
    to_dict,
    upgrade_saved,
)


def test_default_run_composes_named_sections():
    cfg = load_run_config()
    assert cfg.data.name == "ml-100k"
    assert cfg.model.name == "mini"
    assert cfg.train.precision == "fp32"


def test_overrides_win_and_are_typed():
    cfg = load_run_config(None, ["train.lr=3e-4", "model.n_layers=4", "eval.ks=[1,10]", "data.path=null"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.n_layers == 4
    assert cfg.eval.ks == [1, 10]
    assert cfg.data.path is None


def test_section_swap_from_command_line(tmp_path):
    other = CONFIG_ROOT / "model"
    names = sorted(p.stem for p in other.glob("*.yaml"))
    cfg = load_run_config(None, [f"model={names[-1]}"])
    assert cfg.model.name == yaml.safe_load((other / f"{names[-1]}.yaml").read_text()).get("name", cfg.model.name)


def test_run_file_inline_values_beat_section_file(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("name: mine\ndefaults:\n  model: tiny\nmodel:\n  n_layers: 3\n")
    cfg = load_run_config(run)
    assert cfg.name == "mine" and cfg.model.n_layers == 3


@pytest.mark.parametrize(
    "override, fragments",
    [
        (["train.lrr=1"], ["command line", "train.lrr", "did you mean 'lr'"]),
        (["model.n_layers=abc"], ["command line", "model.n_layers", "integer"]),
        (["train.zero_stage=5"], ["train.zero_stage", "0 | 1 | 2 | 3"]),
        (["model.backbone=hstuu"], ["model.backbone", "did you mean 'hstu'"]),
        (["data.columns.usr=x"], ["data.columns.usr", "did you mean 'user'"]),
        (["lr"], ["key=value"]),
        (["eval.beam_size=10"], ["command line", "eval.beam_size is now generate.beam_size"]),
        (["eval.baseline_lr=1e-3"], ["eval.baseline_lr is now baseline.lr"]),
        (["eval.top_k=200"], ["baseline.cascade_candidates (100) must be >= eval.top_k (200)"]),
    ],
)
def test_bad_overrides_name_the_key(override, fragments):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, override)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_unknown_key_in_file_names_file_and_suggestion(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("defaults:\n  model: tiny\nmodel:\n  d_modle: 32\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(run)
    message = str(err.value)
    assert str(run) in message and "model.d_modle" in message and "did you mean 'd_model'" in message


def test_validation_error_names_the_files(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("defaults:\n  model: tiny\nmodel:\n  d_model: 30\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(run)
    assert str(run) in str(err.value) and "divisible" in str(err.value)


def test_unknown_section_name_suggests(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        load_run_config(None, ["model=tinny"])
    run = tmp_path / "run.yaml"
    run.write_text("defaults:\n  modle: tiny\n")
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        load_run_config(run)


def test_invalid_yaml_names_line(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(run)
    assert str(run) in str(err.value) and "line" in str(err.value)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_run_config(None, ["train.lr=2e-3", "name=roundtrip"])
    path = save_resolved(cfg, tmp_path)
    again = from_dict(RunConfig, yaml.safe_load(Path(path).read_text()), str(path))
    assert to_dict(again) == to_dict(cfg)


def test_a_config_saved_before_the_eval_split_loads_with_keys_in_their_new_sections():
    """Exports written before `generate` and `baseline` left the eval section keep loading (e2erec/model/export.py)."""
    old = to_dict(load_run_config())
    old["eval"].update(beam_size=30, steering={"exclude_seen": False}, baseline_dim=32, baseline_lr=1e-3,
                       cascade_candidates=120)
    del old["generate"], old["baseline"]
    cfg = from_dict(RunConfig, upgrade_saved(old), "old export")
    assert cfg.generate.beam_size == 30 and cfg.generate.steering.exclude_seen is False
    assert (cfg.baseline.sasrec_dim, cfg.baseline.lr, cfg.baseline.cascade_candidates) == (32, 1e-3, 120)
    assert old["eval"]["beam_size"] == 30  # the caller's dict is left as it was


def test_every_shipped_section_file_loads():
    for section in ("data", "tokenizer", "model", "train", "eval"):
        for file in sorted((CONFIG_ROOT / section).glob("*.yaml")):
            load_run_config(None, [f"{section}={file.stem}"])
    for file in sorted((CONFIG_ROOT / "run").glob("*.yaml")):
        load_run_config(file)


def test_load_config_for_standalone_specs(tmp_path):
    from dataclasses import dataclass, field

    @dataclass
    class Spec:
        sizes: list[int] = field(default_factory=list)
        lr: float = 0.1

    path = tmp_path / "spec.yaml"
    path.write_text("sizes: [1, 2]\n")
    assert load_config(Spec, path, ["lr=1e-2"]).lr == pytest.approx(1e-2)
    path.write_text("sizez: [1, 2]\n")
    with pytest.raises(ConfigError, match="did you mean 'sizes'"):
        load_config(Spec, path)
