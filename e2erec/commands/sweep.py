"""`e2erec sweep SPEC.yaml [key=value ...]`: run a scaling-law sweep (resumably) and fit the laws.

    e2erec sweep configs/sweeps/cpu.yaml                          # run pending points here, then fit
    e2erec sweep configs/sweeps/cpu.yaml parallel=2               # two points at a time
    e2erec sweep configs/sweeps/gpu_cluster.yaml --slurm          # submit the pending points as a Slurm array
    e2erec sweep configs/sweeps/gpu_cluster.yaml --slurm --wait   # ... and fit when the array has finished
    e2erec sweep configs/sweeps/cpu.yaml --status                 # what is done, failed, killed, pending
    e2erec sweep configs/sweeps/cpu.yaml --fit-only               # refit from the finished points

Completed points are never rerun; failed, preempted and killed ones are listed and run again (resuming from their
checkpoints). Outputs in the spec's out_dir: points.json, points/<id>/ (each a normal run folder), results.csv/.json
(one row per completed point), sweep_report.md, fit.json and PNGs. Exit status 1 when points are still unfinished.
"""

from __future__ import annotations

import argparse
from collections import Counter

HELP = "Run a scaling-law sweep and fit the laws."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="sweep spec YAML (e.g. configs/sweeps/cpu.yaml)")
    parser.add_argument("overrides", nargs="*", help="spec overrides, e.g. parallel=2 bootstrap=50")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--slurm", action="store_true", help="submit pending points as a job array (slurm/sweep_array.sbatch)")
    mode.add_argument("--status", action="store_true", help="list point states and exit")
    mode.add_argument("--fit-only", action="store_true", help="collect finished points and fit; run nothing")
    parser.add_argument("--wait", action="store_true", help="with --slurm: wait for the array, then collect and fit")
    parser.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                        help="extra sbatch option, repeatable (e.g. --sbatch-arg=--partition=gpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _states(points) -> dict[str, tuple[str, str]]:
    from e2erec.sweep.runner import point_state

    return {p.id: point_state(p) for p in points}


def run(args: argparse.Namespace) -> int:
    from e2erec.sweep.report import write_report
    from e2erec.sweep.runner import collect, run_local, submit_slurm, write_points
    from e2erec.sweep.spec import expand, load_spec

    spec = load_spec(args.spec, args.overrides)
    points = expand(spec)
    points_file = write_points(spec, points)
    states = _states(points)
    counts = Counter(s for s, _ in states.values())
    print(f"[sweep] {spec.name}: {len(points)} points in {spec.root} ("
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")
    for p in points:
        state, detail = states[p.id]
        if state in ("failed", "killed", "preempted"):
            print(f"[sweep]   {p.id}: {state} last time ({detail}) -> {'rerun' if not args.status else 'will rerun'}")
    if args.status:
        for p in points:
            print(f"{p.id}\t{states[p.id][0]}")
        return 0

    todo = [p for p in points if states[p.id][0] != "completed"]
    if todo and not args.fit_only:
        if args.slurm:
            job = submit_slurm(spec, points_file, todo, args.sbatch_arg, wait=args.wait)
            print(f"[sweep] submitted job array {job} ({len(todo)} points); logs in {spec.root / 'slurm'}")
            if not args.wait:
                print(f"[sweep] when it has finished: e2erec sweep {args.spec} --fit-only")
                return 0
        else:
            rcs = run_local(spec, todo, parallel=spec.parallel, progress=not args.no_progress)
            bad = {k: v for k, v in rcs.items() if v != 0}
            if bad:
                print("[sweep] unfinished: " + ", ".join(f"{k} (exit {v})" for k, v in bad.items())
                      + "; rerun the same command to retry them")
        states = _states(points)

    rows = collect(spec, points)
    counts = Counter(s for s, _ in states.values())
    result = write_report(spec.root, spec.name, rows, dict(counts), param_key=spec.param_key,
                          bootstrap=spec.bootstrap, target_compute=spec.target_compute,
                          budgets=spec.budgets if spec.mode == "isoflop" else None)
    ch = result["chinchilla"]
    if "alpha" in ch:
        ci = ch.get("ci", {})

        def interval(k: str) -> str:
            return f" [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if k in ci else ""

        print(f"[sweep] L(N,D): alpha={ch['alpha']:.3f}{interval('alpha')} beta={ch['beta']:.3f}{interval('beta')} "
              f"E={ch['E']:.3f} R2={ch['r2']:.4f}")
    if "mean_abs_rel_error" in result["holdout"]:
        print(f"[sweep] hold-out (largest size): mean |rel err| {result['holdout']['mean_abs_rel_error']:.2%}")
    print(f"[sweep] {len(rows)} rows -> {spec.root / 'results.csv'}; report {spec.root / 'sweep_report.md'}")
    unfinished = sum(v for k, v in counts.items() if k != "completed")
    return 1 if unfinished else 0
