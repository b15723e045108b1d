"""The training engine in one process (world size 1, gloo): golden losses, NaN skipping, resume, refusal, export."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from e2erec.config import load_run_config
from e2erec.errors import ArtifactMismatchError
from e2erec.train.engine import Trainer, TrainingAborted
from e2erec.train.task import RecTask

from .helpers import overrides, train_losses

GOLDEN = Path(__file__).parent / "golden_losses.json"
# Two identical CPU runs in separate processes differ by ~1 float32 ulp now and then (measured: 9.580004692 vs
# 9.580003738 at step 4; BLAS kernels pick their blocking by buffer alignment). A wrong resume (other batches, lost
# optimizer or scheduler state) moves the loss by 1e-3 or more, so 1e-5 separates the two cleanly.
RESUME_RTOL = 1e-5


def make_trainer(dist_info, run_dir: Path, sids: Path, *extra: str, wrap=None) -> Trainer:
    cfg = load_run_config(None, overrides(run_dir, sids, *extra))
    task = RecTask.from_config(cfg, dist_info)
    if wrap is not None:
        build = task.build_model
        task.build_model = lambda: wrap(build())
    return Trainer(cfg, task, dist_info)


@pytest.mark.parametrize("workers", [0, 2])
def test_golden_losses(dist_info, sids_dir, tmp_path, workers):
    """Per-step losses of the tiny model on real ml-100k batches, against a committed file: any silent numeric
    change (model, batching, sampler, optimizer, schedule) shows up here; batches built ahead by threads
    (train.num_workers) are the same batches. Regenerate deliberately with E2EREC_UPDATE_GOLDEN=1 and say why in
    the commit."""
    tr = make_trainer(dist_info, tmp_path / "run", sids_dir, "train.max_steps=5", "train.export=false",
                      f"train.num_workers={workers}")
    losses = [tr.train_step()["loss"] for _ in range(5)]
    tr._close_stream()
    if os.environ.get("E2EREC_UPDATE_GOLDEN") == "1" and workers == 0:
        GOLDEN.write_text(json.dumps({"config": overrides(Path("RUN"), Path("SIDS")), "losses": losses}, indent=1))
    golden = json.loads(GOLDEN.read_text())["losses"]
    assert losses == pytest.approx(golden, rel=1e-5, abs=1e-6)
    assert losses[-1] < losses[0]  # and it learns


class NaNAt(torch.nn.Module):
    """Wraps the real model; its loss is NaN on the given (0-based) forward calls."""

    def __init__(self, model: torch.nn.Module, bad_calls: set[int]):
        super().__init__()
        self.model, self.bad_calls, self.calls = model, bad_calls, 0

    def num_params(self, non_embedding: bool = False) -> int:
        return self.model.num_params(non_embedding)

    def forward(self, batch):
        out = self.model(batch)
        if self.calls in self.bad_calls:
            out["loss"] = out["loss"] * float("nan")
        self.calls += 1
        return out


def test_nan_loss_skips_the_step_then_aborts(dist_info, sids_dir, tmp_path):
    tr = make_trainer(dist_info, tmp_path / "skip", sids_dir, wrap=lambda m: NaNAt(m, {1}))
    tr.train_step()
    params = [p.detach().clone() for p in tr.engine.module.parameters()]
    exp_avg = [s["exp_avg"].clone() for s in tr.base_optimizer.state.values()]
    r = tr.train_step()  # NaN loss
    assert r["bad"] and tr.bad_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(params, tr.engine.module.parameters()))
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(exp_avg, tr.base_optimizer.state.values()))
    r = tr.train_step()  # training continues normally
    assert not r["bad"] and torch.isfinite(torch.tensor(r["loss"]))
    assert not all(torch.equal(a, b) for a, b in zip(params, tr.engine.module.parameters()))

    run_dir = tmp_path / "abort"
    tr = make_trainer(dist_info, run_dir, sids_dir, "train.max_bad_steps=1", wrap=lambda m: NaNAt(m, {1, 2}))
    with pytest.raises(TrainingAborted, match="max_bad_steps=1"):
        tr.run()
    final = json.loads((run_dir / "final.json").read_text())
    assert final["status"] == "failed" and final["bad_steps"] == 2 and final["steps"] == 3
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum("step skipped" in e.get("event", "") for e in events) == 2


def test_resume_export_and_mismatch(dist_info, sids_dir, tmp_path):
    a_dir = tmp_path / "a"
    tr = make_trainer(dist_info, a_dir, sids_dir)
    assert tr.run() == 0
    ref = train_losses(a_dir)
    final = json.loads((a_dir / "final.json").read_text())
    assert final["status"] == "completed" and final["steps"] == 6 and final["tokens"] > 0
    assert final["flops"] > 6 * final["non_embedding_params"] * final["tokens"]  # + code heads and attention
    assert 0 < final["eval_loss"] < 20 and "sid_recall@10" in final["metrics"]
    assert [p.name for p in sorted((a_dir / "checkpoints").iterdir())] == ["step_00000003", "step_00000006"]
    # The resolved config records this run's own parameter count, the one final.json reports.
    import yaml

    assert yaml.safe_load((a_dir / "config.yaml").read_text())["model"]["param_count"] == final["params"]

    # Resume from the step-3 checkpoint into a new run folder: steps 4-6 reproduce the uninterrupted run.
    b_dir = tmp_path / "b"
    tr_b = make_trainer(dist_info, b_dir, sids_dir, f"train.resume={a_dir / 'checkpoints' / 'step_00000003'}",
                        "train.export=false")
    assert tr_b.run() == 0
    resumed = train_losses(b_dir)
    assert sorted(resumed) == [4, 5, 6]
    assert [resumed[s] for s in (4, 5, 6)] == pytest.approx([ref[s] for s in (4, 5, 6)], rel=RESUME_RTOL)

    # The export loads without DeepSpeed and computes exactly what the engine's module computes.
    from e2erec.model.export import export_meta, load_exported

    model, cfg = load_exported(a_dir / "export")
    assert cfg.model == tr.cfg.model and export_meta(a_dir / "export")["step"] == 6
    batch = tr.task.train_batch(tr.sampler.__iter__().__next__(), torch.Generator().manual_seed(1))
    tr.engine.module.eval()
    with torch.no_grad():
        want, got = tr.engine.module(batch), model(batch)
    for key in ("loss", "gen_loss", "calib_loss"):
        assert torch.equal(want[key], got[key]), key
    # The calibration head's item statistics travel with the weights: counted over exactly the training events.
    from e2erec.eval.protocol import training_targets

    rows = training_targets(tr.task.inter, tr.task.split, min_history=0)
    assert model.item_count.dtype == torch.int64 and int(model.item_count.sum()) == len(rows)
    assert int(model.item_pos.sum()) == int(tr.task.inter.label[rows].sum()) > 0

    # Platt scaling fitted on the validation targets at the end is in final.json and in the exported weights.
    cal = final["calibration"]
    assert cal["n_targets"] > 100 and cal["logloss_calibrated"] <= cal["logloss_raw"] + 1e-9
    assert (float(model.calib_scale), float(model.calib_shift)) == pytest.approx((cal["scale"], cal["shift"]))
    assert (cal["scale"], cal["shift"]) != (1.0, 0.0)

    # A checkpoint from another model shape is refused, naming what differs.
    with pytest.raises(ArtifactMismatchError, match=r"blocks\.0\.attn_norm\.weight has shape \[64\] in the checkpoint vs \[32\] now"):
        make_trainer(dist_info, tmp_path / "c", sids_dir, "model.d_model=32", "train.resume=" + str(a_dir)).run()


def test_tensorboard_and_metrics_log_each_step_once(dist_info, sids_dir, tmp_path):
    """Read back with TensorBoard's own EventAccumulator: every tag has each step once, though the last step is
    evaluated twice (periodically, then the final evaluation of the kept weights under its own tags)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "tb"
    tr = make_trainer(dist_info, run_dir, sids_dir, "train.tensorboard=true", "train.eval_every=3",
                      "train.eval_max_targets=32", "train.export=false")
    assert tr.run() == 0
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "eval/eval_loss", "final/eval_loss"} <= set(tags)
    for tag in tags:
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), (tag, steps)
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 7))
    assert [e.step for e in acc.Scalars("eval/eval_loss")] == [3, 6]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keyed = [(r["kind"], r["step"]) for r in rows if r["kind"] != "event"]
    assert len(keyed) == len(set(keyed)) and ("final", 6) in keyed


def test_prefetched_batches_checkpoint_the_consumed_position_and_resume_exactly(dist_info, sids_dir, tmp_path):
    """With threads building batches ahead, the checkpoint holds the sampler position of the last batch trained on
    (not of the last one built), so a resumed run with prefetching replays steps 4-6 of the uninterrupted one."""
    sync = make_trainer(dist_info, tmp_path / "sync", sids_dir, "train.export=false")
    for _ in range(3):
        sync.train_step()
    a_dir = tmp_path / "a"
    tr = make_trainer(dist_info, a_dir, sids_dir, "train.num_workers=2", "train.export=false", "train.grad_accum=2")
    assert tr.run() == 0
    ref = train_losses(a_dir)
    state = json.loads((a_dir / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())
    assert state["sampler"]["position"] == 6 == 2 * sync.trainer_state()["sampler"]["position"]  # 3 steps x 2 micro
    b_dir = tmp_path / "b"
    tr_b = make_trainer(dist_info, b_dir, sids_dir, "train.num_workers=2", "train.export=false", "train.grad_accum=2",
                        f"train.resume={a_dir / 'checkpoints' / 'step_00000003'}")
    assert tr_b.run() == 0
    resumed = train_losses(b_dir)
    assert [resumed[s] for s in (4, 5, 6)] == pytest.approx([ref[s] for s in (4, 5, 6)], rel=RESUME_RTOL)


def test_accumulation_checkpointing_and_budgets(dist_info, sids_dir, tmp_path):
    """grad_accum=2 sees two micro-batches per step; activation checkpointing changes memory, not numbers;
    max_tokens and time_budget_s stop the run (with a checkpoint and final.json)."""
    plain = make_trainer(dist_info, tmp_path / "p", sids_dir, "train.grad_accum=2")
    ckpt = make_trainer(dist_info, tmp_path / "c", sids_dir, "train.grad_accum=2", "model.activation_checkpointing=true")
    r_plain, r_ckpt = plain.train_step(), ckpt.train_step()
    assert r_plain["loss"] == pytest.approx(r_ckpt["loss"], rel=1e-6)
    assert r_plain["tokens"] > 512  # two micro-batches of <= 512 tokens each
    assert r_plain["grad_norm"] == pytest.approx(r_ckpt["grad_norm"], rel=1e-5)

    run_dir = tmp_path / "tokens"
    tr = make_trainer(dist_info, run_dir, sids_dir, "train.max_steps=1000", "train.max_tokens=1200",
                      "train.export=false", "train.tensorboard=true")
    assert tr.run() == 0
    f = json.loads((run_dir / "final.json").read_text())
    seen = [json.loads(line)["tokens"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "train"]
    assert f["status"] == "completed" and seen[-2] < 1200 <= seen[-1] == f["tokens"] and len(seen) == f["steps"]
    assert (run_dir / "checkpoints" / f"step_{f['steps']:08d}").is_dir()
    assert any((run_dir / "tb").iterdir())  # TensorBoard event file

    run_dir = tmp_path / "time"
    tr = make_trainer(dist_info, run_dir, sids_dir, "train.max_steps=100000", "train.time_budget_s=0.5",
                      "train.export=false")
    assert tr.run() == 0
    f = json.loads((run_dir / "final.json").read_text())
    assert f["status"] == "completed" and 1 <= f["steps"] < 100000


def test_select_best_ends_with_the_best_evaluated_weights(dist_info, sids_dir, tmp_path):
    """train.select=best: the final evaluation, the Platt fit and the export use the weights of the best periodic
    evaluation, not the last step's. The validation scores are scripted (3.0, 1.0, 2.0 at steps 2, 4, 6) so that
    the best is known to lie before the end; the weights are the real ones."""
    run_dir = tmp_path / "best"
    tr = make_trainer(dist_info, run_dir, sids_dir, "train.select=best", "train.eval_every=2",
                      "train.eval_max_targets=64", "train.calibration_targets=128")
    scripted, weights_at = [3.0, 1.0, 2.0], {}
    summarize = tr.task.summarize_eval

    def summarize_scripted(sums):
        out = summarize(sums)
        if scripted:
            weights_at[tr.step] = {k: v.detach().clone() for k, v in tr.engine.module.state_dict().items()}
            out["eval_loss"] = scripted.pop(0)
        return out

    tr.task.summarize_eval = summarize_scripted
    assert tr.run() == 0
    assert sorted(weights_at) == [2, 4, 6]

    from e2erec.model.export import export_meta, load_exported

    final = json.loads((run_dir / "final.json").read_text())
    assert final["steps"] == 6 and final["selected_step"] == 4
    assert export_meta(run_dir / "export")["step"] == 4 and export_meta(run_dir / "export")["trained_steps"] == 6
    model, _ = load_exported(run_dir / "export")
    got = model.state_dict()
    platt = {"calib_scale", "calib_shift"}
    assert all(torch.equal(got[k], v) for k, v in weights_at[4].items() if k not in platt)
    assert not all(torch.equal(got[k], v) for k, v in weights_at[6].items() if k not in platt)
    # The Platt scaling was fitted on, and installed in, the selected weights.
    assert (float(model.calib_scale), float(model.calib_shift)) == pytest.approx(
        (final["calibration"]["scale"], final["calibration"]["shift"]))
    events = [json.loads(line).get("event", "") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(e.startswith("best eval_loss so far") for e in events) == 2  # steps 2 and 4
    assert any("ending with the weights of step 4" in e for e in events)

    # A checkpoint's record of the best survives a resume only while <run_dir>/best still holds those weights.
    assert tr._check_best({"step": 4, "value": 1.0}) == {"step": 4, "value": 1.0}
    assert tr._check_best({"step": 2, "value": 3.0}) is None



def test_early_stop_converges_under_the_protocols_rule(dist_info, sids_dir, tmp_path):
    """train.early_stop: the run stops once eval.patience periodic evaluations bring no better score (the rule the
    baselines follow), ends with the best weights, and final.json and the export record why it stopped. Scores are
    scripted (3.0, 1.0, 2.0, 1.5 at steps 2, 4, 6, 8) so that with patience 2 the run must stop at step 8 of 100."""
    run_dir = tmp_path / "early"
    tr = make_trainer(dist_info, run_dir, sids_dir, "train.select=best", "train.early_stop=true", "eval.patience=2",
                      "train.eval_every=2", "train.max_steps=100", "train.eval_max_targets=32",
                      "train.calibration_targets=0")
    scripted = [3.0, 1.0, 2.0, 1.5, 0.5]
    summarize = tr.task.summarize_eval

    def summarize_scripted(sums):
        out = summarize(sums)
        if scripted:
            out["eval_loss"] = scripted.pop(0)
        return out

    tr.task.summarize_eval = summarize_scripted
    assert tr.run() == 0
    from e2erec.model.export import export_meta

    final = json.loads((run_dir / "final.json").read_text())
    assert final["status"] == "completed" and final["stop_reason"] == "converged"
    assert final["steps"] == 8 and final["selected_step"] == 4
    log = export_meta(run_dir / "export")["fit_log"]
    assert log["stop_reason"] == "converged" and log["best_epoch"] == 2 and log["patience"] == 2
    assert log["valid"][:4] == [3.0, 1.0, 2.0, 1.5] and log["selected_step"] == 4
    assert log["params"] == tr.n_params and log["flops_per_example"] > 0
