"""From a sweep's results table to fitted laws, plots and `sweep_report.md` (+ `fit.json`, PNGs) in the sweep folder.

N is `spec.param_key` (non-embedding parameters by default, as in Kaplan et al. 2020), D the training tokens the
trainer counted, C the FLOPs it reports (its model's per-token formula; 6 N D when it has none), L the final eval loss.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from e2erec.sweep import fit as F
from e2erec.utils.io import atomic_write_json, atomic_write_text


def usable(rows: list[dict]) -> list[dict]:
    """Rows with a finite eval loss: a diverged run is in results.csv but cannot be fitted."""
    return [r for r in rows if r.get("eval_loss") is not None and math.isfinite(float(r["eval_loss"]))]


def analyze(rows: list[dict], *, param_key: str = "non_embedding_params", bootstrap: int = 100,
            target_compute: float = 0.0, budgets: list[float] | None = None, seed: int = 0) -> dict:
    """Every fit the rows support; a fit the data cannot identify is reported with the reason instead."""
    rows = usable(rows)
    n = np.array([float(r[param_key]) for r in rows])
    d = np.array([float(r["tokens"]) for r in rows])
    c = np.array([float(r["flops"]) for r in rows])
    loss = np.array([float(r["eval_loss"]) for r in rows])
    target = target_compute or (10.0 * float(c.max()) if len(c) else 0.0)
    out: dict = {"n_points": len(rows), "param_key": param_key, "target_compute": target,
                 "params_span": float(n.max() / n.min()) if len(n) else 0.0}
    try:
        ch = F.fit_chinchilla(n, d, loss, bootstrap=bootstrap, seed=seed, target_compute=target)
        n_opt, d_opt = ch.optimal_allocation(target)
        out["chinchilla"] = {**ch.to_dict(), "n_opt": n_opt, "d_opt": d_opt}
    except ValueError as e:
        out["chinchilla"] = {"skipped": str(e)}
    frontier = F.compute_frontier(c, loss) if len(c) else np.array([], int)
    out["frontier_ids"] = [rows[i]["id"] for i in frontier]
    try:
        out["compute"] = F.fit_compute(c[frontier], loss[frontier], bootstrap=bootstrap, seed=seed).to_dict()
    except ValueError as e:
        out["compute"] = {"skipped": str(e)}
    if len(np.unique(n)) >= 3:
        try:
            out["holdout"] = F.holdout_check(n, d, loss)
        except ValueError as e:
            out["holdout"] = {"skipped": str(e)}
    else:
        out["holdout"] = {"skipped": "needs >= 3 model sizes (fit on the smaller ones, predict the largest)"}
    if budgets:
        out["isoflop"] = F.isoflop_minima(n, c, loss, budgets=budgets)
    return out


def _fmt_ci(value: float, ci: list[float] | None, fmt: str = "{:.3g}") -> str:
    if ci and all(math.isfinite(v) for v in ci):
        return f"{fmt.format(value)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"
    return fmt.format(value)


def plot(rows: list[dict], result: dict, out_dir: Path, param_key: str = "non_embedding_params") -> list[Path]:
    """Log-log plots with the fitted curves: loss vs N (one line per token budget), loss vs C with the frontier fit,
    and the fit's residuals."""
    n = np.array([float(r[param_key]) for r in rows])
    d = np.array([float(r["tokens"]) for r in rows])
    c = np.array([float(r["flops"]) for r in rows])
    loss = np.array([float(r["eval_loss"]) for r in rows])
    target = [float(r["tokens_target"]) for r in rows]
    paths = []
    ch = result.get("chinchilla", {})
    fit = F.ChinchillaFit(**{k: ch[k] for k in ("E", "A", "B", "alpha", "beta")}) if "alpha" in ch else None

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    groups = sorted(set(target))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(groups), 1)))
    n_grid = np.geomspace(n.min() / 1.5, n.max() * 1.5, 100)
    for color, t in zip(colors, groups):
        sel = np.array([x == t for x in target])
        ax.scatter(n[sel], loss[sel], color=color, label=f"D ≈ {t:.3g}", zorder=3)
        if fit is not None:
            ax.plot(n_grid, fit.predict(n_grid, np.median(d[sel])), color=color, lw=1)
    ax.set(xscale="log", yscale="log", xlabel=f"N ({param_key})", ylabel="eval loss",
           title="L(N, D) = E + A/N^α + B/D^β" + (f"  (α={fit.alpha:.2f}, β={fit.beta:.2f})" if fit else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "loss_vs_params.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(c, loss, color="0.6", label="runs", zorder=2)
    ids = [r["id"] for r in rows]
    front = [ids.index(i) for i in result.get("frontier_ids", [])]
    ax.scatter(c[front], loss[front], color="C3", label="compute frontier", zorder=3)
    cf = result.get("compute", {})
    if "b" in cf:
        c_grid = np.geomspace(c.min() / 1.5, c.max() * 3, 100)
        ax.plot(c_grid, F.ComputeFit(a=cf["a"], b=cf["b"], c=cf["c"]).predict(c_grid), color="C3", lw=1,
                label=f"L(C) = a·C^-{cf['b']:.3f} + {cf['c']:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="C (training FLOPs)", ylabel="eval loss", title="Loss vs compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "loss_vs_compute.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    if fit is not None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
        resid = np.log(loss) - np.log(fit.predict(n, d))  # log-space, what the fit minimised
        axes[0].scatter(n, resid)
        axes[0].set(xscale="log", xlabel="N", ylabel="log L - log L̂")
        axes[1].scatter(d, resid)
        axes[1].set(xscale="log", xlabel="D (tokens)")
        for a in axes:
            a.axhline(0, color="0.5", lw=0.8)
        fig.suptitle("Residuals of the L(N, D) fit")
        fig.tight_layout()
        paths.append(out_dir / "residuals.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def markdown(name: str, rows: list[dict], result: dict, states: dict[str, int]) -> str:
    lines = [f"# Scaling-law sweep `{name}`", ""]
    lines.append(f"{result['n_points']} finished points; N ({result['param_key']}) spans {result['params_span']:.1f}x. "
                 + "Point states: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())) + ".")
    lines += ["", "## L(N, D) = E + A / N^α + B / D^β (Hoffmann et al. 2022, Huber on log residuals)", ""]
    ch = result["chinchilla"]
    if "skipped" in ch:
        lines.append(f"Not fitted: {ch['skipped']}")
    else:
        ci = ch.get("ci", {})
        lines += ["| parameter | value [95% bootstrap CI] |", "|---|---|"]
        for k in ("alpha", "beta", "E", "A", "B"):
            lines.append(f"| {k} | {_fmt_ci(ch[k], ci.get(k))} |")
        lines.append(f"| R² (loss) | {ch['r2']:.4f} |")
        lines += ["", (f"Compute-optimal at C = {result['target_compute']:.3g} FLOPs (C ≈ 6ND): "
                       f"N_opt = {_fmt_ci(ch['n_opt'], ci.get('n_opt'))}, D_opt = {_fmt_ci(ch['d_opt'], ci.get('d_opt'))}.")]
    lines += ["", "## L(C) = a·C^(-b) + c on the compute frontier", ""]
    cf = result["compute"]
    if "skipped" in cf:
        lines.append(f"Not fitted: {cf['skipped']}")
    else:
        ci = cf.get("ci", {})
        lines.append(f"b = {_fmt_ci(cf['b'], ci.get('b'))}, a = {_fmt_ci(cf['a'], ci.get('a'))}, "
                     f"c = {_fmt_ci(cf['c'], ci.get('c'))}; R² = {cf['r2']:.4f} over {cf['n_points']} frontier points.")
    lines += ["", "## Hold-out: fit on the smaller sizes, predict the largest", ""]
    ho = result["holdout"]
    if "skipped" in ho:
        lines.append(f"Not run: {ho['skipped']}")
    else:
        lines.append(f"Held out N = {ho['held_out_params']:.3g} ({len(ho['points'])} points; fit on {ho['fit_points']}): "
                     f"mean |relative error| {ho['mean_abs_rel_error']:.2%}, max {ho['max_abs_rel_error']:.2%}.")
        lines += ["", "| tokens | loss | predicted |", "|---|---|---|"]
        lines += [f"| {p['tokens']:.3g} | {p['loss']:.4f} | {p['predicted']:.4f} |" for p in ho["points"]]
    if result.get("isoflop"):
        lines += ["", "## IsoFLOP minima (Hoffmann et al. Approach 2)", "", "| C | N_opt | min loss |", "|---|---|---|"]
        lines += [f"| {m['compute']:.3g} | {m['n_opt']:.3g} | {m['loss_min']:.4f} |" for m in result["isoflop"]]
    lines += ["", "## Points", "", "| id | N | D | C | eval loss |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['id']} | {float(r[result['param_key']]):.3g} | {float(r['tokens']):.3g} | "
                     f"{float(r['flops']):.3g} | {float(r['eval_loss']):.4f} |")
    lines += ["", "![loss vs params](loss_vs_params.png)", "", "![loss vs compute](loss_vs_compute.png)"]
    if "skipped" not in ch:
        lines += ["", "![residuals](residuals.png)"]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, name: str, rows: list[dict], states: dict[str, int], **analyze_kw) -> dict:
    """Fit, plot and write `sweep_report.md`, `fit.json` and the PNGs into `out_dir`; returns the fit results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = usable(rows)
    result = analyze(rows, **analyze_kw)
    if rows:
        plot(rows, result, out_dir, analyze_kw.get("param_key", "non_embedding_params"))
    atomic_write_json(out_dir / "fit.json", result)
    atomic_write_text(out_dir / "sweep_report.md", markdown(name, rows, result, states))
    return result
