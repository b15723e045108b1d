"""Fit the baselines beside the end-to-end model's training: one work queue, one single-threaded lane per core.

    lanes = BaselineLanes(names, cfg, deadline_s=...)   # starts the helper lane (a spawned process) at once
    ... train the end-to-end model in this process (one thread) ...
    systems = lanes.finish(inter, split)                # this process takes queued baselines too, then collects

On a small machine the cheapest way to give every system its full early-stopping run is to keep every core busy
with one single-threaded job: two OpenMP threads per model spin-wait on a shared 2-core machine (8x the CPU time of
one thread for a SASRec epoch, `baseline.threads`). The helper lane starts fitting baselines (in list order)
while this process trains; when training ends this process pulls the next unstarted baseline from the same queue,
so neither core idles while work is left. Each baseline gets the wall time left until the deadline, divided among
the baselines not yet started (its `eval.baseline_budget_s`); its fit log says whether it converged in it.

The helper loads the dataset from the prepared cache itself (nothing large crosses the process boundary on the way
in); fitted baselines come back pickled (their weights and item features: megabytes at catalogue sizes where one
process fits them at all).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import pickle
import queue
import time

log = logging.getLogger(__name__)


def _next_index(counter, lock, n: int) -> int | None:
    with lock:
        i = counter.value
        if i >= n:
            return None
        counter.value = i + 1
        return i


def _fit_one(name: str, inter, split, cfg, deadline: float, n_left: int):
    from e2erec.baselines import build_baseline
    from e2erec.eval.protocol import FitContext

    left = deadline - time.time()
    # Share the time to the deadline among the baselines not yet started (this one included).
    budget = max(left / max(n_left, 1), 10.0) if deadline > 0 else 0.0
    ctx = FitContext.from_run(cfg)
    ctx = dataclasses.replace(ctx, protocol=dataclasses.replace(ctx.protocol, baseline_budget_s=budget))
    system = build_baseline(name)
    t0 = time.perf_counter()
    system.fit(inter, split, ctx)
    seconds = time.perf_counter() - t0
    print(f"fitted {name} in {seconds:.0f}s" + (f" (budget {budget:.0f}s)" if budget else ""), flush=True)
    return system


def _lane(names, cfg, deadline, counter, lock, results) -> None:
    """The helper lane: pull baselines off the queue until it is empty; send each fitted one back."""
    import torch

    from e2erec.data import load_dataset, make_split

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        inter = load_dataset(cfg.data, progress=False)
        split = make_split(inter, cfg.data)
        while (i := _next_index(counter, lock, len(names))) is not None:
            system = _fit_one(names[i], inter, split, cfg, deadline, len(names) - i)
            results.put((i, pickle.dumps(system), None))
    except BaseException as e:  # reported by the parent, which then fails with the name of the baseline
        results.put((-1, None, f"{type(e).__name__}: {e}"))
        raise


class BaselineLanes:
    """A helper process fitting baselines from a shared queue (see the module docstring)."""

    def __init__(self, names: list[str], cfg, deadline_s: float = 0.0, helper: bool = True):
        self.names, self.cfg = list(names), cfg
        self.deadline = time.time() + deadline_s if deadline_s > 0 else 0.0
        ctx = mp.get_context("spawn")  # a fresh interpreter: no forked OpenMP or DeepSpeed state
        self.counter, self.lock, self.results = ctx.Value("i", 0), ctx.Lock(), ctx.Queue()
        self.process = None
        if helper and self.names:
            self.process = ctx.Process(target=_lane, name="e2erec-baselines", daemon=True,
                                       args=(self.names, cfg, self.deadline, self.counter, self.lock, self.results))
            self.process.start()

    def finish(self, inter, split) -> list:
        """Fit the baselines still queued in this process, collect the helper's, and return all of them in the
        order of `names`."""
        import torch

        fitted: dict[int, object] = {}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            while (i := _next_index(self.counter, self.lock, len(self.names))) is not None:
                fitted[i] = _fit_one(self.names[i], inter, split, self.cfg, self.deadline, len(self.names) - i)
        finally:
            torch.set_num_threads(threads)
        while len(fitted) < len(self.names):
            i, payload, error = self._get()
            if error is not None:
                raise RuntimeError(f"the baseline lane failed: {error}")
            fitted[i] = pickle.loads(payload)
        if self.process is not None:
            self.process.join(timeout=60)
        return [fitted[i] for i in range(len(self.names))]

    def _get(self):
        while True:
            try:
                return self.results.get(timeout=5)
            except queue.Empty:  # is the helper still alive?
                if self.process is None or not self.process.is_alive():
                    raise RuntimeError(
                        f"the baseline lane exited (code {getattr(self.process, 'exitcode', None)}) before "
                        f"returning every baseline of {self.names}") from None

    def close(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
