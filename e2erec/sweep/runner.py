"""Running a sweep's points (locally, or as a Slurm array) and collecting the finished ones into one table.

Resumable by construction: a point's state is read from its run folder, never from a sweep-level log.

    completed   final.json says "completed"                     -> skipped, one row in results.csv
    failed      final.json says "failed", or the process exited non-zero without one
    preempted   final.json says "preempted" (checkpointed on SIGTERM/SIGUSR1)
    killed      the run died on a signal, or left no final.json and no exit status (SIGKILL, node loss, the sweep
                itself killed)
    pending     never started

Every state but `completed` is reported and run again; the rerun continues from the point's newest checkpoint
(`train.resume=auto` is part of every point's overrides).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from e2erec.config import shipped_dir
from e2erec.errors import E2ERecError
from e2erec.sweep.spec import Point, SweepSpec
from e2erec.utils.io import atomic_write_json, atomic_write_text

SLURM_DIR = shipped_dir("slurm")  # e2erec/slurm/ in an installed wheel, <checkout>/slurm/ in a source checkout
ARRAY_SCRIPT = SLURM_DIR / "sweep_array.sbatch"
ATTEMPT = "sweep_attempt.json"  # the sweep's own record of a local launch: command, start, exit status


def write_points(spec: SweepSpec, points: list[Point]) -> Path:
    """`<root>/points.json`: what a Slurm array task reads its point from (by SLURM_ARRAY_TASK_ID = index)."""
    path = spec.root / "points.json"
    atomic_write_json(path, {"sweep": spec.name, "run_config": spec.run_config, "points": [asdict(p) for p in points]})
    return path


def read_point(points_file: str | Path, index: int) -> tuple[str, Point]:
    """(run_config, point) for one index of a points file; errors name the file and the index."""
    try:
        data = json.loads(Path(points_file).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise E2ERecError(f"{points_file}: cannot read the sweep's points file: {e}") from None
    points = data.get("points", [])
    if not 0 <= index < len(points):
        raise E2ERecError(f"{points_file}: no point with index {index} (the file has {len(points)}: 0..{len(points) - 1})")
    return data["run_config"], Point(**points[index])


def point_state(point: Point) -> tuple[str, str]:
    """(state, detail) of a point from its run folder; see the module docstring for the states."""
    run_dir = Path(point.run_dir)
    final = run_dir / "final.json"
    if final.exists():
        try:
            info = json.loads(final.read_text())
        except json.JSONDecodeError:
            return "failed", f"{final} is not valid JSON"
        status = info.get("status", "unknown")
        if status == "completed":
            return "completed", ""
        return ("preempted" if status == "preempted" else "failed"), info.get("error", f"status {status!r}")
    attempt = run_dir / ATTEMPT
    if attempt.exists():
        rc = json.loads(attempt.read_text()).get("rc")
        if rc is None:
            return "killed", "started but never finished (no exit status, no final.json)"
        if rc < 0:
            return "killed", f"killed by {signal.Signals(-rc).name} without final.json"
        return "failed", f"exit status {rc} without final.json; see {run_dir / 'train.log'}"
    if run_dir.exists() and any(run_dir.iterdir()):
        return "killed", "the folder has output but no final.json"
    return "pending", ""


def _retire_final(point: Point) -> None:
    """Keep a non-completed final.json as history, so the rerun's state is not read from the old attempt."""
    final = Path(point.run_dir) / "final.json"
    if final.exists():
        n = len(list(final.parent.glob("final.attempt-*.json")))
        os.replace(final, final.with_name(f"final.attempt-{n}.json"))


def _run_point(point: Point, run_config: str, env: dict[str, str]) -> int:
    run_dir = Path(point.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _retire_final(point)
    argv = [sys.executable, "-m", "e2erec.cli", *point.train_argv(run_config)]
    record = {"command": shlex.join(argv), "started": time.time(), "rc": None}
    with open(run_dir / "train.log", "ab") as log:
        log.write(f"\n=== e2erec sweep: {record['command']}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        record["pid"] = proc.pid
        atomic_write_json(run_dir / ATTEMPT, record)
        rc = proc.wait()
    atomic_write_json(run_dir / ATTEMPT, {**record, "rc": rc, "ended": time.time()})
    return rc


def run_local(spec: SweepSpec, points: list[Point], parallel: int = 1, progress: bool = True) -> dict[str, int]:
    """Run `points` as `e2erec train` subprocesses, `parallel` at a time; returns point id -> exit status.

    Each process gets OMP_NUM_THREADS = cores / parallel (unless the caller set it), so parallel points do not
    oversubscribe the machine.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    # Each point is its own single-process job: launcher variables inherited from a surrounding job would make it
    # wait for ranks that never come.
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(k, None)
    results: dict[str, int] = {}
    bar = tqdm(total=len(points), desc=f"sweep {spec.name}", unit="point", disable=not progress)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(_run_point, p, spec.run_config, env): p for p in points}
        for fut in as_completed(futures):
            p = futures[fut]
            results[p.id] = fut.result()
            bar.set_postfix_str(f"{p.id}: exit {results[p.id]}")
            bar.update(1)
    bar.close()
    return results


def submit_slurm(spec: SweepSpec, points_file: Path, points: list[Point], extra_args: list[str] | None = None,
                 wait: bool = False) -> str:
    """Submit the points as one job array of slurm/sweep_array.sbatch (array index = point index); returns the job id.

    With `wait`, returns when every array task has ended (`sbatch --wait`); the exit status is not checked here
    because each point's state is read from its folder afterwards.
    """
    indices = ",".join(str(p.index) for p in points)
    throttle = f"%{spec.max_concurrent}" if spec.max_concurrent else ""
    logs = spec.root / "slurm"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [
        "sbatch", "--parsable", f"--array={indices}{throttle}", f"--job-name=sweep-{spec.name}",
        f"--output={logs}/%A_%a.out", *spec.sbatch_args, *(extra_args or []),
        *(["--wait"] if wait else []), str(ARRAY_SCRIPT),
    ]
    env = {**os.environ, "E2EREC_POINTS": str(points_file.resolve()), "E2EREC_SLURM_DIR": str(SLURM_DIR),
           "E2EREC_PYTHON": os.environ.get("E2EREC_PYTHON", sys.executable)}
    if SLURM_DIR.parent != Path(__file__).resolve().parents[1]:
        env["E2EREC_ROOT"] = str(SLURM_DIR.parent)  # a checkout: the tasks run in it; a wheel's, in the submit dir
    try:
        proc = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True)
    except FileNotFoundError:
        raise E2ERecError("sbatch not found: run on a Slurm login node, or without --slurm to run points locally") from None
    job_id = proc.stdout.strip().split(";")[0]
    if not job_id or (proc.returncode != 0 and not wait):
        raise E2ERecError(f"sbatch failed (exit {proc.returncode}): {proc.stderr.strip()}\n  command: {shlex.join(cmd)}")
    return job_id


# ----------------------------------------------------------------------------------------------------------------
# Collection

COLUMNS = ["id", "size", "lr", "tokens_target", "params", "non_embedding_params", "tokens", "flops", "steps",
           "eval_loss", "wall_s", "world_size"]


def collect(spec: SweepSpec, points: list[Point]) -> list[dict]:
    """One row per completed point (params, tokens, FLOPs, eval loss, `metrics/*`), written as results.csv/.json."""
    rows = []
    for p in points:
        if point_state(p)[0] != "completed":
            continue
        final = json.loads((Path(p.run_dir) / "final.json").read_text())
        row = {"id": p.id, "size": p.size, "lr": p.lr if p.lr is not None else final.get("config", {}).get("train", {}).get("lr"),
               "tokens_target": p.tokens}
        row.update({k: final.get(k) for k in COLUMNS if k not in row})
        row.update({f"metrics/{k}": v for k, v in sorted((final.get("metrics") or {}).items())})
        row["run_dir"] = p.run_dir
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row)) or COLUMNS
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(spec.root / "results.csv", buf.getvalue())
    atomic_write_json(spec.root / "results.json", rows)
    return rows

