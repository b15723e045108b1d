"""The training loop around DeepSpeed: one code path for 1 CPU process, torchrun, the deepspeed launcher and Slurm.

    cfg -> task (data, semantic IDs, model factory) -> deepspeed.initialize(model, torch AdamW, warmup+cosine)
        -> [resume] -> loop: grad_accum micro-batches -> agree across ranks (bad step? stop?) -> step
                              -> log / eval (-> best weights) / checkpoint
        -> stop: checkpoint; the last or the best weights -> final eval, Platt fit, export, final.json

The model knows nothing about DeepSpeed; the engine wraps it. Every rank runs the same number of forward passes
(the data sampler gives each rank the same number of batches, evaluation pads ranks to the same count), which
ZeRO-3 requires because each forward gathers parameters collectively.

Stopping: `max_steps`, `max_tokens` (training tokens over all ranks), `time_budget_s` (wall time summed over
resumes), or with `train.early_stop` the protocol's early-stopping rule (`e2erec.eval.stopping`, the baselines' own):
`eval.patience` periodic evaluations without a better `select_metric`; final.json's `stop_reason` names which.
SIGTERM/SIGUSR1 (cluster preemption; Slurm: `--signal=B:USR1@T`) set a flag; at the next step boundary all ranks
agree, checkpoint, and exit with EXIT_PREEMPTED so the sbatch script can requeue
(`[ $? -eq 85 ] && scontrol requeue $SLURM_JOB_ID`). A NaN/inf loss on any rank skips the whole optimizer step on
every rank (parameters and Adam moments untouched) and aborts after `train.max_bad_steps` such steps.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from e2erec.config import RunConfig, save_resolved
from e2erec.errors import E2ERecError, IntegrityError, RankLostError
from e2erec.eval.stopping import FitLog, StoppingRule
from e2erec.model.export import export_meta, load_weights
from e2erec.train import checkpoint as C
from e2erec.train import distributed as D
from e2erec.train.config import SELECT_METRICS
from e2erec.train.ds_config import deepspeed_config, resolve_precision
from e2erec.train.export import export_model
from e2erec.train.observe import RunLogger, memory_stats, peak_tflops
from e2erec.train.optim import build_optimizer, build_scheduler
from e2erec.train.prefetch import BatchStream
from e2erec.utils.io import atomic_write_json, to_dict

EXIT_PREEMPTED = 85  # checkpointed after SIGTERM/SIGUSR1: requeue and resume with train.resume=auto


class TrainingAborted(E2ERecError):
    """Too many NaN/inf losses: the run cannot continue as configured."""


class TrainTask(Protocol):
    """What the engine needs from the recommender side (`e2erec.train.task.RecTask` is the real one)."""

    codebook_sizes: list[int]
    data_fingerprint: str

    def build_model(self) -> torch.nn.Module: ...

    def make_sampler(self, rank: int, world_size: int): ...  # iterable of index batches; set_epoch(e); len()

    def train_batch(self, indices, generator: torch.Generator): ...

    def eval_sums(self, model: torch.nn.Module, rank: int, world_size: int, max_targets: int,
                  device: torch.device) -> dict[str, float]: ...

    def summarize_eval(self, sums: dict[str, float]) -> dict[str, Any]: ...

    def fit_calibration(self, model: torch.nn.Module, device: torch.device) -> dict[str, Any] | None: ...

    def artifact_ref(self) -> dict[str, Any]: ...

    # What an export carries besides the weights: {"semantic_ids": folder, "item_table": file, "dataset": summary}.
    def export_assets(self, run_dir: Path, is_main: bool) -> dict[str, Any]: ...


class Trainer:
    """Holds the DeepSpeed engine and the run's counters; `run()` is the whole job, `train_step()` one step."""

    def __init__(self, cfg: RunConfig, task: TrainTask, info: D.DistInfo | None = None, run_dir: Path | None = None):
        self.cfg, self.task = cfg, task
        self.tcfg = cfg.train
        self.info = info or D.init_distributed(cfg.train.device, cfg.train.collective_timeout_s)
        self.run_dir = Path(run_dir or cfg.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        on_gpu = self.info.device.type == "cuda"
        self.precision = resolve_precision(self.tcfg.precision, on_gpu)

        import deepspeed

        if not on_gpu:
            D.skip_cpu_shm_comm_build()
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            if self.tcfg.threads > 0:
                torch.set_num_threads(self.tcfg.threads)
            elif "OMP_NUM_THREADS" not in os.environ and local_world > 1:
                # Ranks on one host split its cores; torch's default (a thread per core in every rank) oversubscribes
                # (on a busy 2-core machine we measured a tiny-model step at 6 s with 2 threads vs 0.35 s with 1).
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        # Same initial weights on every rank and in every rerun: each rank builds the model from this seed.
        torch.manual_seed(cfg.seed)
        model = task.build_model()
        self.n_params = sum(p.numel() for p in model.parameters())
        # The resolved config.yaml records this run's own count (configs/model/*.yaml document it for the reference
        # codebook), so that it agrees with final.json and the export.
        self.cfg = cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, param_count=self.n_params))
        self.n_params_non_emb = model.num_params(non_embedding=True) if hasattr(model, "num_params") else self.n_params
        self.identity = C.run_identity(model, task.codebook_sizes, task.data_fingerprint, self.info.world_size,
                                       self.tcfg.zero_stage)
        self.sampler = task.make_sampler(self.info.rank, self.info.world_size)
        self.total_steps = self._horizon()
        optimizer = build_optimizer(model, self.tcfg)
        scheduler = build_scheduler(optimizer, self.tcfg, self.total_steps)
        ds_cfg = deepspeed_config(self.tcfg, self.info.world_size, on_gpu)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg, dist_init_required=False
        )
        self.base_optimizer = optimizer  # the SkippableAdamW under ZeRO's wrapper
        self.step = 0
        self.tokens = 0
        self.bad_steps = 0
        self.elapsed_prev = 0.0  # wall seconds of earlier segments of this run (before resumes)
        self.n_seqs = 0  # training sequences seen: tokens / n_seqs is the mean sequence length used for FLOPs
        self.examples = 0  # training targets seen (predicted items + calibration labels), for FLOPs per example
        self._last_saved = -1
        self.skipped: list[tuple[Path, str]] = []  # checkpoints resume passed over, and why
        self._t0 = time.time()  # start of this segment of the run (reset by run())
        self._stop_signal: str | None = None  # set by the signal handler on this rank
        self._agreed_stop = False  # some rank had been signalled at the last step's all-reduce
        self.stream: BatchStream | None = None  # training batches in step order (e2erec.train.prefetch)
        self.last_eval: dict[str, Any] = {}
        self.last_eval_step = -1
        self.best: dict[str, Any] | None = None  # {"step", "value"} of the weights in <run_dir>/best (select=best)
        self.calibration: dict[str, Any] | None = None  # the post-hoc Platt scaling fitted when training ends
        self.fit_log = self._new_fit_log()  # the periodic evaluations under the protocol's early-stopping rule
        self.stop_reason = ""
        self._last_loss, self._eval_t = math.nan, time.time()  # for the fit log's per-evaluation entries

    # ------------------------------------------------------------------------------------------ bookkeeping

    def _horizon(self) -> int:
        """Steps the cosine schedule spans: the first of max_steps and the steps max_tokens buys at full batches
        (packed batches run a little under budget, so the token limit lands slightly past the horizon); 0 = flat
        after warm-up when only a time budget is set."""
        limits = [self.tcfg.max_steps] if self.tcfg.max_steps > 0 else []
        if self.tcfg.max_tokens > 0:
            per_step = self.tcfg.batch_tokens * self.tcfg.grad_accum * self.info.world_size
            limits.append(max(1, math.ceil(self.tcfg.max_tokens / per_step)))
        return min(limits, default=0)

    def _new_fit_log(self) -> FitLog:
        """The record of the periodic evaluations under the protocol's rule (`eval.patience`); the step and token
        limits are the engine's own, so the rule's evaluation cap is unbounded here."""
        rule = StoppingRule(patience=self.cfg.eval.patience, max_evals=2**31 - 1)
        name = self.tcfg.select_metric
        return rule.start(name, SELECT_METRICS[name], unit=f"{self.tcfg.eval_every} steps")

    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "sampler": self.stream.state_dict() if self.stream is not None else self.sampler.state_dict(),
            "bad_steps": self.bad_steps,
            "elapsed_s": self.elapsed_prev + time.time() - self._t0,
            "n_seqs": self.n_seqs,
            "examples": self.examples,
            "best": self.best,
            "fit_log": self.fit_log.to_dict(),
        }

    def resume(self) -> Path | None:
        """Restore the newest checkpoint that passes verification on every rank. `train.resume=auto` skips the ones
        that fail, warning with the reason (`self.skipped` keeps them for the log); an explicit path does not."""
        candidates = C.resume_candidates(self.tcfg.resume, self.ckpt_root)
        checksums = True if self.tcfg.verify_checkpoints else None
        path = None
        for candidate in candidates:
            reason = None
            try:
                C.verify_checkpoint(candidate, checksums=checksums)
            except E2ERecError as e:
                reason = str(e)
            if D.all_agree(reason is None, self.info.device):
                path = candidate
                break
            reason = reason or "it failed verification on another rank"
            if self.tcfg.resume != "auto":
                raise IntegrityError(f"train.resume={self.tcfg.resume}: {reason}")
            self.skipped.append((candidate, reason))
            if self.info.is_main:
                print(f"[e2erec] warning: skipping checkpoint {candidate}: {reason}", file=sys.stderr, flush=True)
        if path is None:
            if self.skipped:
                listed = "; ".join(f"{p.name}: {why}" for p, why in self.skipped)
                raise IntegrityError(f"train.resume=auto: no checkpoint under {self.ckpt_root} is valid ({listed}). "
                                     f"Move them aside to start afresh.")
            return None
        state = C.load_checkpoint(self.engine, path, self.identity, self.info)
        self.step, self.tokens = state["step"], state["tokens"]
        self.sampler.load_state_dict(state["sampler"])
        self._close_stream()  # the next batch comes from the resumed position
        self.bad_steps, self.elapsed_prev = state["bad_steps"], state["elapsed_s"]
        self.n_seqs = state["n_seqs"]
        self.examples = state.get("examples", 0)
        self.best = self._check_best(state.get("best"))
        if self.best is not None and state.get("fit_log"):  # else the evaluations still to come find the best again
            self.fit_log = FitLog.from_dict(state["fit_log"])
        self._last_saved = self.step
        return path

    def _check_best(self, best: dict[str, Any] | None) -> dict[str, Any] | None:
        """The checkpoint's record of the best weights, if <run_dir>/best still holds them. A run killed after a new
        best was written but before the next checkpoint leaves weights from past the resumed step: the record is
        then dropped and the resumed run finds its best again from the evaluations still to come."""
        if best is None:
            return None
        try:
            on_disk = export_meta(self.run_dir / "best").get("step")
        except E2ERecError:
            on_disk = None
        return best if on_disk == best["step"] else None

    def _batch_stream(self) -> BatchStream:
        """This rank's batches from the current step on. The sampler's (epoch, position) of the last consumed batch
        is part of every checkpoint, so a resumed run draws exactly the batches the uninterrupted run would have."""
        if self.stream is None:
            self.stream = BatchStream(self.task, self.sampler, seed=self.tcfg.seed, rank=self.info.rank,
                                      grad_accum=self.tcfg.grad_accum, start_step=self.step,
                                      num_workers=self.tcfg.num_workers)
        return self.stream

    def _close_stream(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def _install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            self._stop_signal = signal.Signals(signum).name

        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, handler)

    # ------------------------------------------------------------------------------------------ one step

    def train_step(self) -> dict[str, float]:
        """One optimizer step over grad_accum micro-batches; returns rank-averaged losses and step facts."""
        self.engine.train()
        sums = {"loss": 0.0, "gen_loss": 0.0, "calib_loss": 0.0}
        bad = 0
        tokens = seqs = examples = 0
        stream = self._batch_stream()
        for micro in range(self.tcfg.grad_accum):
            batch = stream.next().to(self.info.device)
            out = self.engine(batch)
            loss = out["loss"]
            finite = bool(torch.isfinite(loss.detach()).item())
            bad += 0 if finite else 1
            # Backward even on a bad loss: ZeRO reduces gradients inside backward hooks, so every rank must run it;
            # the NaN gradients are discarded with the skipped step.
            self.engine.backward(loss)
            for k in sums:
                if k in out:
                    sums[k] += float(out[k].detach()) / self.tcfg.grad_accum
            tokens += int(out["n_tokens"]) if "n_tokens" in out else int(batch.n_tokens)
            examples += int(out["n_gen"]) + int(out["n_calib"]) if "n_gen" in out else 0
            seqs += int(batch.offsets.numel() - 1)
            if micro + 1 < self.tcfg.grad_accum:
                self.engine.step()  # DeepSpeed only counts the micro-step here; it updates at the boundary
        ws = self.info.world_size
        stop_flag = 1.0 if self._stop_signal else 0.0
        totals = D.all_sum([float(bad), float(tokens), float(seqs), stop_flag, float(examples), *sums.values()],
                           self.info.device)
        any_bad = totals[0] > 0
        # DeepSpeed computes the norm itself except in plain fp32 without ZeRO (where its clipping discards it);
        # there the gradients are already averaged over ranks at this point.
        own_norm = None
        if self.tcfg.zero_stage == 0 and self.precision == "fp32":
            grads = [p.grad.detach().float().norm() for p in self.engine.module.parameters() if p.grad is not None]
            own_norm = float(torch.stack(grads).norm()) if grads else 0.0
        lr = float(self.scheduler.get_last_lr()[0])  # this step's; DeepSpeed advances the schedule in step()
        self.base_optimizer.skip = any_bad
        try:
            self.engine.step()
        finally:
            self.base_optimizer.skip = False
        self.step += 1
        self.tokens += int(totals[1])
        self.n_seqs += int(totals[2])
        self.examples += int(totals[4])
        # Stop only on the agreed flag: a signal landing after the all-reduce is carried into the next step's, so
        # no rank leaves the loop while another waits in a collective.
        self._agreed_stop = totals[3] > 0
        if any_bad:
            self.bad_steps += 1
        grad_norm = own_norm if own_norm is not None else self.engine.get_global_grad_norm()
        result = {k: v / ws for k, v in zip(sums, totals[5:])}
        result.update(
            tokens=int(totals[1]),
            bad=any_bad,
            grad_norm=float(grad_norm) if grad_norm is not None and not any_bad else float("nan"),
            lr=lr,
        )
        return result

    # ------------------------------------------------------------------------------------------ evaluation

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Un-sharded module weights on every rank (a collective under ZeRO-3, which partitions them)."""
        module = self.engine.module
        if self.tcfg.zero_stage != 3:
            return module.state_dict()
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def _inference_model(self) -> torch.nn.Module:
        """The module to call outside `forward`: the engine's own, or under ZeRO-3 a plain copy holding the gathered
        weights (evaluation calls encode, the heads and beam search, which ZeRO-3's forward hooks do not gather
        for). Collective under ZeRO-3: call on every rank."""
        if self.tcfg.zero_stage != 3:
            return self.engine.module
        if getattr(self, "_eval_model", None) is None:
            self._eval_model = self._fresh_model()
        self._eval_model.load_state_dict(self.full_state_dict())
        return self._eval_model

    def _fresh_model(self) -> torch.nn.Module:
        """A new module on this rank's device, to load weights into; its (overwritten) random init must not shift
        the training RNG."""
        cuda = [self.info.device] if self.info.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            return self.task.build_model().to(self.info.device)

    def evaluate(self, max_targets: int, model: torch.nn.Module | None = None) -> dict[str, Any]:
        """Validation loss and retrieval metrics over (a prefix of) the validation targets, summed over ranks.
        `model`: an `_inference_model()` the caller already holds (saves a ZeRO-3 gather)."""
        model = self._inference_model() if model is None else model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            sums = self.task.eval_sums(model, self.info.rank, self.info.world_size, max_targets, self.info.device)
        model.train(was_training)
        keys = sorted(sums)
        totals = D.all_sum([sums[k] for k in keys], self.info.device)
        return self.task.summarize_eval(dict(zip(keys, totals)))

    def periodic_eval(self, log: RunLogger) -> None:
        """The every-`eval_every` validation; under select=best a better score writes <run_dir>/best (collective)."""
        model = self._inference_model()  # under ZeRO-3 gathered once, for the scores and for <run_dir>/best
        self.last_eval, self.last_eval_step = self.evaluate(self.tcfg.eval_max_targets, model), self.step
        log.log(self.step, _flatten_eval(self.last_eval), kind="eval")
        name = self.tcfg.select_metric
        value = self.last_eval.get(name, self.last_eval.get("metrics", {}).get(name))
        if value is None or not math.isfinite(value):
            return
        now = time.time()
        better = self.fit_log.record(value, self._last_loss, now - self._eval_t)
        self._eval_t = now
        if self.tcfg.select != "best" or not better:
            return
        self._export(self.run_dir / "best", model.state_dict(), self.step, self.last_eval)
        self.best = {"step": self.step, "value": float(value)}
        log.event(self.step, f"best {name} so far: {value:.4f}; weights in {self.run_dir / 'best'}", best=self.best)

    def selected_model(self, log: RunLogger) -> torch.nn.Module:
        """The weights the run ends with: the last, or under select=best those of the best periodic evaluation (the
        last step is one of them: it is evaluated now if it was not). Collective under ZeRO-3: call on every rank."""
        if self.tcfg.select == "best" and self.tcfg.eval_every > 0 and self.last_eval_step != self.step:
            self.periodic_eval(log)
        if self.tcfg.select != "best" or self.best is None or self.best["step"] == self.step:
            return self._inference_model()
        log.event(self.step, f"ending with the weights of step {self.best['step']} (best "
                  f"{self.tcfg.select_metric} {self.best['value']:.4f})", selected_step=self.best["step"])
        return load_weights(self.run_dir / "best", self._fresh_model())

    def calibrate(self, model: torch.nn.Module | None = None) -> dict[str, Any] | None:
        """Fit the task's post-hoc calibration on validation data and install it in the trained module (before the
        last checkpoint and the export, which therefore carry it)."""
        model = self._inference_model() if model is None else model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            fitted = self.task.fit_calibration(model, self.info.device)
        model.train(was_training)
        if fitted and model is getattr(self, "_eval_model", None):  # the ZeRO-3 copy: the checkpoint carries it too
            self.engine.module.set_calibration(fitted["scale"], fitted["shift"])
        return fitted

    # ------------------------------------------------------------------------------------------ the job

    def _should_stop(self) -> str | None:
        """"preempted", "completed" (with `stop_reason`: converged, max_steps, max_tokens or budget) or None."""
        t = self.tcfg
        if self._agreed_stop:
            return "preempted"
        # Every rank holds the same evaluations (summed over ranks), so they agree without a collective.
        if (t.early_stop and t.select == "best" and self.fit_log.valid
                and self.fit_log.stale >= self.fit_log.patience):
            self.stop_reason = "converged"
        elif t.max_steps > 0 and self.step >= t.max_steps:
            self.stop_reason = "max_steps"
        elif t.max_tokens > 0 and self.tokens >= t.max_tokens:
            self.stop_reason = "max_tokens"
        elif t.time_budget_s > 0:
            over = self.elapsed_prev + time.time() - self._t0 >= t.time_budget_s
            # Ranks' clocks differ by a few ms: agree, or one rank would wait in the next collective forever.
            if D.any_rank(over, self.info.device):
                self.stop_reason = "budget"
        if self.stop_reason:
            self.fit_log.finish(self.stop_reason, self.elapsed_prev + time.time() - self._t0)
            return "completed"
        return None

    def save(self) -> Path:
        path = C.save_checkpoint(self.engine, self.ckpt_root, self.step, self.trainer_state(), self.identity,
                                 self.info, self.tcfg.keep_last, self.tcfg.min_free_gb)
        self._last_saved = self.step
        return path

    def run(self) -> int:
        """Train until a stopping rule fires; returns the process exit code (0, or EXIT_PREEMPTED)."""
        info, t = self.info, self.tcfg
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_resolved(self.cfg, self.run_dir)
        stale = C.remove_stale_temporaries(self.ckpt_root) if info.is_main else []
        resumed = self.resume()
        self._t0 = time.time()
        self._install_signal_handlers()
        total = max(0, t.max_steps)
        log = RunLogger(self.run_dir, info.is_main, t.tensorboard, total=total, initial=self.step)
        for path in stale:
            log.event(self.step, f"removed {path}, the unfinished checkpoint of an earlier run")
        for path, why in self.skipped:
            log.event(self.step, f"skipped checkpoint {path}: {why}")
        if resumed is not None:
            log.event(self.step, f"resumed from {resumed}")
        peak = peak_tflops(info.device, t.peak_tflops)
        status = "failed"
        self._last_loss, self._eval_t = math.nan, time.time()
        window_t, window_tokens = time.time(), 0
        try:
            while not (status := self._should_stop()):
                r = self.train_step()
                self._last_loss = r["loss"]
                window_tokens += r["tokens"]
                if r["bad"]:
                    log.event(self.step, f"non-finite loss ({r['loss']}): step skipped on all ranks",
                              bad_steps=self.bad_steps)
                    if self.bad_steps > t.max_bad_steps:
                        raise TrainingAborted(
                            f"{self.bad_steps} steps had a NaN/inf loss (train.max_bad_steps={t.max_bad_steps}); "
                            f"last at step {self.step}. Lower train.lr or check the data; the last checkpoint is "
                            f"in {self.ckpt_root}"
                        )
                log.progress(1, {"loss": r["loss"], "lr": r["lr"]})
                if self.step % t.log_every == 0:
                    dt = max(time.time() - window_t, 1e-9)
                    scalars = {k: r[k] for k in ("loss", "gen_loss", "calib_loss", "lr", "grad_norm")}
                    scalars.update(tokens=self.tokens, tokens_per_s=window_tokens / dt, **memory_stats(info.device))
                    if peak:
                        seq_len = self.tokens / max(self.n_seqs, 1)
                        flops = self.engine.module.flops_per_token(int(seq_len)) * window_tokens / dt
                        scalars["mfu"] = flops / (peak * 1e12 * info.world_size)
                    log.log(self.step, scalars)
                    window_t, window_tokens = time.time(), 0
                if t.eval_every > 0 and self.step % t.eval_every == 0:
                    self.periodic_eval(log)
                if t.ckpt_every > 0 and self.step % t.ckpt_every == 0:
                    self.save()
            # The final evaluation, the calibration fit and the export read the same (under ZeRO-3: gathered
            # once) weights.
            done = self.selected_model(log) if status == "completed" else None
            final_eval = self.evaluate(t.final_eval_max_targets, done) if done is not None else self.last_eval
            if final_eval:  # its own tags: the last periodic evaluation already logged eval/* at this step
                log.log(self.step, _flatten_eval(final_eval), kind="final")
            if done is not None and (fitted := self.calibrate(done)):
                self.calibration = fitted
                log.event(self.step, f"Platt scaling of the calibration head on {fitted['n_targets']} validation "
                          f"targets: a={fitted['scale']:.3f} b={fitted['shift']:.3f}, LogLoss "
                          f"{fitted['logloss_raw']:.4f} -> {fitted['logloss_calibrated']:.4f}",
                          calibration=fitted)
            path = self.save() if self._last_saved != self.step else self.ckpt_root / C.step_dir_name(self.step)
            why = f" by {self._stop_signal or 'a signal to another rank'}" if status == "preempted" else ""
            log.event(self.step, f"{status}{why}; checkpoint {path}")
            if status == "completed" and t.export:
                self._export(self.run_dir / "export", done.state_dict(), self._selected_step(), final_eval)
            self._write_final(status, final_eval)
            return EXIT_PREEMPTED if status == "preempted" else 0
        except BaseException as e:
            lost = D.lost_ranks(e)
            try:
                self._write_final("failed", self.last_eval, error=f"{type(e).__name__}: {e}")
            except OSError as unwritten:  # e.g. the disk that failed the checkpoint: the first error is the news
                print(f"[e2erec] warning: could not record the failure in final.json: {unwritten}", file=sys.stderr)
            if lost is not None:
                done = C.list_checkpoints(self.ckpt_root)
                raise RankLostError(
                    f"rank {info.rank} stopped at step {self.step}: a collective failed and {lost}. "
                    f"Last checkpoint: {done[-1] if done else 'none'}; relaunch the job with train.resume=auto "
                    f"(it loses the steps since). The collective said: {str(e).splitlines()[0][:300]}"
                ) from None
            raise
        finally:
            self._close_stream()
            log.close()

    def _export(self, out_dir: Path, state: dict[str, torch.Tensor], step: int, validation: dict[str, Any]) -> None:
        assets = self.task.export_assets(self.run_dir, self.info.is_main)
        meta = {"codebook_sizes": list(self.task.codebook_sizes), "semantic_ids": self.task.artifact_ref(),
                "data_fingerprint": self.task.data_fingerprint, "step": step, "trained_steps": self.step,
                "tokens": self.tokens, "params": self.n_params, "validation": validation, "dataset": assets["dataset"],
                "fit_log": self.training_record()}  # the evaluations so far under the early-stopping rule
        export_model(out_dir, state, meta, self.cfg, self.info.is_main, assets["semantic_ids"], assets["item_table"])

    def _selected_step(self) -> int:
        return self.best["step"] if self.tcfg.select == "best" and self.best is not None else self.step

    def training_flops(self) -> float:
        """Training FLOPs so far: the model's `flops_per_token` at the mean training sequence length, times training
        tokens (6·N·D with N = non-embedding parameters when the model has no formula)."""
        seq_len = self.tokens / max(self.n_seqs, 1)
        module = self.engine.module
        if hasattr(module, "flops_per_token"):
            return module.flops_per_token(round(seq_len)) * self.tokens
        return 6.0 * self.n_params_non_emb * self.tokens

    def training_record(self) -> dict[str, Any]:
        """The periodic evaluations under the early-stopping rule, with what the report's training section shows:
        parameters and training FLOPs per training target (predicted item or calibration label)."""
        self.fit_log.describe(self.n_params, self.training_flops() / max(self.examples, 1), 0,
                              "training target (next item or calibration label)")
        return {**self.fit_log.to_dict(), "steps": self.step,
                "epochs": self.stream.epoch if self.stream is not None else self.sampler.epoch,
                "selected_step": self._selected_step(), "examples": self.examples}

    def _write_final(self, status: str, ev: dict[str, Any], error: str | None = None) -> None:
        """`<run_dir>/final.json`, read by the scaling-law sweep. FLOPs: the model's `flops_per_token` (training
        FLOPs, 6·N_dense + attention; see GenerativeRecommender.flops_per_token) at the mean training sequence
        length, times training tokens; 6·N·D with N = non-embedding parameters when the model has no formula."""
        if not self.info.is_main:
            return
        flops = self.training_flops()
        seq_len = self.tokens / max(self.n_seqs, 1)
        final = {
            "status": status,
            "params": self.n_params,
            "non_embedding_params": self.n_params_non_emb,
            "tokens": self.tokens,
            "flops": float(flops),
            "flops_formula": "flops_per_token(mean_seq_len) * tokens",
            "mean_seq_len": seq_len,
            "steps": self.step,
            "stop_reason": self.stop_reason or status,
            "fit_log": self.training_record(),
            "selected_step": self._selected_step(),  # whose weights eval_loss, metrics and the export are
            "bad_steps": self.bad_steps,
            "eval_loss": ev.get("eval_loss"),
            "metrics": ev.get("metrics", {}),
            "wall_s": self.elapsed_prev + time.time() - self._t0,
            "world_size": self.info.world_size,
            "zero_stage": self.tcfg.zero_stage,
            "precision": self.precision,
            "config": to_dict(self.cfg),
        }
        if self.calibration:
            final["calibration"] = self.calibration
        if error:
            final["error"] = error
        atomic_write_json(self.run_dir / "final.json", final)


def _flatten_eval(ev: dict[str, Any]) -> dict[str, Any]:
    out = {"eval_loss": ev.get("eval_loss")}
    out.update({k: v for k, v in ev.items() if k not in ("eval_loss", "metrics")})
    out.update({f"metrics/{k}": v for k, v in ev.get("metrics", {}).items()})
    return out


def train(cfg: RunConfig, task: TrainTask | None = None) -> int:
    """Run a training job from a resolved config (any launcher); returns the exit code."""
    info = D.init_distributed(cfg.train.device, cfg.train.collective_timeout_s)
    try:
        if task is None:
            from e2erec.train.task import RecTask

            task = RecTask.from_config(cfg, info)
        code = Trainer(cfg, task, info).run()
    except BaseException:
        D.shutdown(clean=False)
        raise
    D.shutdown()
    return code
