"""Baselines evaluated under the same protocol as the end-to-end model (see `e2erec.eval.protocol.Recommender`).

    system = build_baseline("sasrec"); system.fit(inter, split, run_cfg)
"""

from __future__ import annotations

BASELINES = {
    "popularity": ("e2erec.baselines.popularity", "Popularity"),
    "sasrec": ("e2erec.baselines.sasrec", "SASRec"),
    "cascade": ("e2erec.baselines.cascade", "Cascade"),
    "plugin_cascade": ("e2erec.baselines.cascade", "PluginCascade"),
}


def build_baseline(name: str, **kwargs):
    """An unfitted baseline by name; kwargs go to its constructor (e.g. `item_text=` for plugin_cascade)."""
    import difflib
    import importlib

    if name not in BASELINES:
        close = difflib.get_close_matches(name, BASELINES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        from e2erec.config import ConfigError

        raise ConfigError(f"unknown system {name!r}{hint}; available: {', '.join(BASELINES)}", key="eval.baselines")
    module, cls = BASELINES[name]
    return getattr(importlib.import_module(module), cls)(**kwargs)
