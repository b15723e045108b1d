"""The protocol's one early-stopping rule and its record: what stops a stage, and why."""

import math

import pytest
import torch

from e2erec.eval.stopping import FitLog, StoppingRule, training_flops


def test_rule_stops_for_the_first_reason_and_says_which():
    rule = StoppingRule(patience=2, max_evals=6)
    log = rule.start("ndcg@10", higher_is_better=True)
    for score, stop in [(0.1, None), (0.3, None), (0.2, None), (0.3, "converged")]:  # a tie is not better
        log.record(score)
        assert log.check(elapsed_s=0.0) == stop
    assert log.best_epoch == 2 and log.best_value == 0.3 and log.converged

    log = rule.start("logloss", higher_is_better=False)
    for score in (0.9, 0.8, 0.7, 0.6, 0.65, 0.5):
        log.record(score)
    assert log.check(elapsed_s=0.0) == "max_epochs" and log.best_epoch == 6 and not log.converged

    log = StoppingRule(3, 100, time_budget_s=10.0).start("ndcg@10", True)
    log.record(0.1)
    assert log.check(elapsed_s=5.0) is None and log.check(elapsed_s=10.0) == "budget" and log.wall_s == 10.0

    log = rule.start("ndcg@10", True)
    assert not log.record(math.nan) and log.best_epoch == 0  # a NaN score is never the best


def test_record_round_trips_and_rejects_a_bad_rule():
    log = StoppingRule(2, 5).start("eval_loss", False, unit="100 steps")
    log.record(2.0, loss=3.0, seconds=1.5)
    log.describe(10, 1e6, 100, "target")
    log.finish("max_steps", 12.0)
    back = FitLog.from_dict(log.to_dict())
    assert back.to_dict() == log.to_dict()
    assert back.unit == "100 steps" and back.stop_reason == "max_steps" and back.loss == [3.0]
    with pytest.raises(ValueError, match="patience"):
        StoppingRule(0, 5)


def test_training_flops_counts_forward_and_backward_matmuls():
    layer = torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16, requires_grad=True)
    # forward 2*4*16*8, backward twice that (input and weight gradients)
    assert training_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 4 * 16 * 8
