"""One typed config tree, loaded from YAML under `configs/`, overridable from the command line.

A run config composes section configs by name::

    # configs/run/default.yaml
    defaults:
      data: ml-100k          # -> configs/data/ml-100k.yaml
      model: tiny            # -> configs/model/tiny.yaml
      train: cpu             # -> configs/train/cpu.yaml
    train:
      lr: 1.0e-3             # inline values win over the named section file

and command-line overrides win over both: ``train.lr=3e-4 model.n_layers=4 model=small``.
Every key is checked against the dataclass that owns it: an unknown key is an error naming the key, the file
it came from and the closest valid key; a value of the wrong type names the key, the file and the expected type.
Each component owns its section dataclass (``e2erec/data/config.py`` and friends); this module only composes them.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from e2erec.baselines.config import BaselineConfig
from e2erec.data.config import DataConfig
from e2erec.eval.config import EvalConfig
from e2erec.generate.config import GenerateConfig
from e2erec.model.config import ModelConfig
from e2erec.tokenizer.config import TokenizerConfig
from e2erec.train.config import TrainConfig
from e2erec.utils.io import atomic_write_text, to_dict  # to_dict: re-exported, callers import it from here too


def shipped_dir(name: str) -> Path:
    """A data folder shipped with e2erec (`configs`, `slurm`): `e2erec/<name>/` in an installed wheel, else the
    top-level `<name>/` of the source checkout (an editable install runs from the checkout, too)."""
    package = Path(__file__).resolve().parent
    return package / name if (package / name).is_dir() else package.parent / name


CONFIG_ROOT = Path(os.environ.get("E2EREC_CONFIGS") or shipped_dir("configs"))


class ConfigError(ValueError):
    """A bad config: the message names the key, the file it came from, and what would be valid.

    `key` is the dotted path of the offending key (e.g. ``train.lr``), used to find the file it came from.
    """

    def __init__(self, message: str, key: str = ""):
        super().__init__(message)
        self.key = key


@dataclass
class RunConfig:
    name: str = "default"
    out_dir: str = "runs/{name}"  # `{name}` is filled in; relative paths are relative to the working directory
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # the protocol
    generate: GenerateConfig = field(default_factory=GenerateConfig)  # the end-to-end model's search and steering
    baseline: BaselineConfig = field(default_factory=BaselineConfig)  # the baselines' hyperparameters

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir.format(name=self.name))

    def validate(self) -> None:
        if self.baseline.cascade_candidates < self.eval.top_k:
            raise ValueError(f"baseline.cascade_candidates ({self.baseline.cascade_candidates}) must be >= "
                             f"eval.top_k ({self.eval.top_k})")


# Keys that moved to another section (issue 22: the eval section held generation and baseline settings too). An old
# config that sets one is told where it went.
MOVED = {"eval.beam_size": "generate.beam_size", "eval.steering": "generate.steering",
         "eval.baseline_dim": "baseline.sasrec_dim", "eval.baseline_max_len": "baseline.max_len",
         "eval.baseline_batch_size": "baseline.batch_size", "eval.baseline_lr": "baseline.lr",
         "eval.baseline_threads": "baseline.threads",
         **{f"eval.{k}": f"baseline.{k}" for k in ("cascade_dim", "sasrec_layers", "sasrec_dropout", "sasrec_negatives",
                                                   "cascade_candidates", "cascade_negatives", "semantic_candidates")}}


# ----------------------------------------------------------------------------------------------------------------
# dict <-> dataclass with validation


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _resolve_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting the lossless cases (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {' | '.join(_type_name(o) for o in options)}, got {value!r}", key=where)
    if origin is Literal:
        if value not in get_args(tp):
            close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: {value!r} is not one of {_type_name(tp)}{hint}", key=where)
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {_type_name(tp)}, got {value!r}", key=where)
        return _build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}", key=where)
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}", key=where)
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}", key=where)
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}", key=where)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}", key=where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}", key=where)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}", key=where)
    return value


def _build(cls: type, values: dict, where: str) -> Any:
    hints = _resolve_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            path = f"{where}.{key}" if where else str(key)
            if path in MOVED:
                raise ConfigError(f"{path} is now {MOVED[path]}", key=path)
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"{path}: unknown key {key!r}{hint}", key=path)
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}", key=where) from e
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as e:
            raise ConfigError(f"{where or cls.__name__}: {e}", key=where) from e
    return obj


def upgrade_saved(values: dict) -> dict:
    """A saved run config (an export's config.yaml) written before keys `MOVED`, with each moved key at its new
    place: old exports keep loading, where a user's own YAML with an old key is told the new name."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for old, new in MOVED.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        if isinstance(values.get(old_section), dict) and old_key in values[old_section]:
            values.setdefault(new_section, {})[new_key] = values[old_section].pop(old_key)
    return values


def from_dict(cls: type, values: dict, source: str = "<dict>") -> Any:
    """Build dataclass `cls` from a nested dict; errors are prefixed with `source` (a file name)."""
    try:
        return _build(cls, values, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}", key=e.key) from None


# ----------------------------------------------------------------------------------------------------------------
# YAML composition


@dataclass
class _Layer:
    """A nested dict of values plus, for every leaf key path, the file (or `command line`) it came from."""

    values: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)  # "a.b.c" -> source


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{line} invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(layer: _Layer, values: dict, source: str, prefix: str = "") -> None:
    def rec(dst: dict, src: dict, prefix: str) -> None:
        for key, value in src.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(dst.get(key), dict):
                rec(dst[key], value, path + ".")
            else:
                dst[key] = value
                for k in [k for k in layer.origin if k.startswith(path + ".")]:
                    del layer.origin[k]
                layer.origin[path] = source

    target = layer.values
    for part in [p for p in prefix.split(".") if p]:
        target = target.setdefault(part, {})
    rec(target, values, prefix)


def section_file(section: str, name: str) -> Path:
    """`configs/<section>/<name>.yaml`, or `name` itself when it is a path to a YAML file."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate
    path = CONFIG_ROOT / section / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in (CONFIG_ROOT / section).glob("*.yaml"))
        close = difflib.get_close_matches(name, available, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"no {section} config named {name!r} (looked for {path}){hint}; available: {available}")
    return path


SECTIONS = ("data", "tokenizer", "model", "train", "eval")


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`a.b=value` pairs; the value is parsed as YAML (`3e-4` -> float, `[1,2]` -> list, `null` -> None)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override {item!r} is not of the form key=value (e.g. train.lr=3e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):
            try:  # YAML 1.1 reads `3e-4` as a string
                value = float(value) if any(c in value for c in "eE.") and value.lower() not in ("e",) else value
            except ValueError:
                pass
        parsed.append((key.strip(), value))
    return parsed


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config (a path, or a name under configs/run/), compose its sections, apply overrides."""
    overrides = parse_overrides(overrides or [])
    run_path = section_file("run", str(path)) if path is not None else CONFIG_ROOT / "run" / "default.yaml"
    raw = _read_yaml(run_path) if run_path.exists() else {}
    defaults = dict(raw.pop("defaults", {}) or {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{run_path}: 'defaults' must map a section to a config name, e.g. 'model: tiny'")
    for key in defaults:
        if key not in SECTIONS:
            close = difflib.get_close_matches(key, SECTIONS, n=1)
            raise ConfigError(f"{run_path}: unknown section {key!r} in defaults" + (f"; did you mean {close[0]!r}?" if close else ""))
    # `model=small` on the command line swaps a whole section file.
    for key, value in overrides:
        if key in SECTIONS and isinstance(value, str):
            defaults[key] = value

    layer = _Layer()
    for section, name in defaults.items():
        file = section_file(section, str(name))
        _merge(layer, _read_yaml(file), str(file), prefix=section + ".")
    _merge(layer, raw, str(run_path))
    for key, value in overrides:
        if key in SECTIONS and isinstance(value, str):
            continue
        _merge(layer, _nest(key, value), "command line")
    return _build_with_origin(RunConfig, layer)


def load_config(cls: type, path: str | Path, overrides: list[str] | None = None) -> Any:
    """Load a single YAML file into dataclass `cls` (e.g. a sweep spec), with overrides."""
    path = Path(path)
    layer = _Layer()
    _merge(layer, _read_yaml(path), str(path))
    for key, value in parse_overrides(overrides or []):
        _merge(layer, _nest(key, value), "command line")
    return _build_with_origin(cls, layer)


def _build_with_origin(cls: type, layer: _Layer) -> Any:
    try:
        return _build(cls, layer.values, "")
    except ConfigError as e:
        raise ConfigError(f"{_origin_of(layer, e.key)}: {e}", key=e.key) from None


def _origin_of(layer: _Layer, key: str) -> str:
    """The file (or 'command line') that set `key`, its nearest parent, or else the keys under it."""
    probe = key
    while probe:
        if probe in layer.origin:
            return layer.origin[probe]
        probe = probe.rsplit(".", 1)[0] if "." in probe else ""
    under = sorted({src for k, src in layer.origin.items() if not key or k.startswith(key + ".")})
    return ", ".join(under) if under else "config"


def save_resolved(cfg: Any, out_dir: str | Path, filename: str = "config.yaml") -> Path:
    """Write the fully resolved config beside an output, atomically."""
    out = Path(out_dir) / filename
    atomic_write_text(out, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return out
