"""The planner: counts equal the real model's, model states equal DeepSpeed's estimators, activations match what
autograd actually saves, and the `e2erec plan` command prints and writes them."""

import json

import pytest
import torch

from e2erec.model import REFERENCE_CODEBOOK, GenerativeRecommender, ModelConfig, build_model_batch
from e2erec.model.plan import activation_bytes, activation_elements_per_token, make_plan, model_state_bytes

from .helpers import random_codes, random_events

TINY = ModelConfig(name="tiny", d_model=64, n_layers=2, n_heads=4)


def test_plan_counts_equal_the_real_tiny_model():
    real = GenerativeRecommender(TINY, REFERENCE_CODEBOOK)
    plan = make_plan(TINY, REFERENCE_CODEBOOK, gpus=1, micro_batch_tokens=1024, seq_len=200)
    assert plan.num_params == sum(p.numel() for p in real.parameters()) == real.num_params()
    assert plan.non_embedding_params == real.num_params(non_embedding=True)
    assert plan.flops_per_token == real.flops_per_token(200)


@pytest.mark.parametrize("gpus", [1, 2, 8, 64])
def test_model_states_equal_deepspeed_estimators(gpus, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    real = GenerativeRecommender(TINY, REFERENCE_CODEBOOK)
    total, largest = stage3.model_to_params(real)
    assert total == stage_1_and_2.model_to_params(real)
    plan = make_plan(TINY, REFERENCE_CODEBOOK, gpus=gpus, micro_batch_tokens=1024)
    assert (plan.num_params, plan.largest_layer_params) == (total, largest)
    _, ds2 = stage_1_and_2.estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=gpus, cpu_offload=False)
    _, ds3, _ = stage3.estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=gpus, cpu_offload=False)
    assert plan.stages[2].model_states == pytest.approx(ds2, abs=1)  # DeepSpeed rounds to whole bytes
    assert plan.stages[3].model_states == pytest.approx(ds3, abs=1)
    # Sharding only ever helps, and with one GPU ZeRO 1/2 hold what stage 0 holds.
    states = [s.model_states for s in plan.stages]
    assert states[0] >= states[1] >= states[2]
    if gpus == 1:
        assert states[0] == states[1] == states[2]


def test_model_states_for_8b_on_meta_device_follow_deepspeed_formula():
    """The 8b config cannot be instantiated here: its count comes from the meta device, DeepSpeed's formula from
    that count (DeepSpeed's own model_to_params needs real storage)."""
    from deepspeed.runtime.zero import stage3

    cfg = ModelConfig(name="8b", d_model=4096, n_layers=38, n_heads=32)
    plan = make_plan(cfg, REFERENCE_CODEBOOK, gpus=64, micro_batch_tokens=8192)
    _, ds3, _ = stage3.estimate_zero3_model_states_mem_needs(
        plan.num_params, plan.largest_layer_params, num_gpus_per_node=8, num_nodes=8, cpu_offload=False
    )
    assert plan.stages[3].model_states == pytest.approx(ds3, abs=1)
    assert plan.stages[0].model_states == 20 * plan.num_params


@pytest.mark.parametrize("backbone", ["transformer", "hstu"])
@pytest.mark.parametrize("ckpt", [False, True])
def test_activation_estimate_matches_saved_tensors(backbone, ckpt):
    """Bytes autograd saves for backward per token (fp32, tensors indexed by token; the reference attention's
    per-sequence score matrices are excluded, as a fused kernel keeps none) vs the planner's formula.
    With checkpointing, the forward pass saves block inputs only; the formula adds one block being recomputed."""
    sizes = [16, 16, 8]
    cfg = ModelConfig(backbone=backbone, d_model=64, n_layers=4, n_heads=4, calibration_hidden=16,
                      attention_backend="reference", activation_checkpointing=ckpt)
    model = GenerativeRecommender(cfg, sizes).train()
    batch = build_model_batch(random_events([64] * 4, 100), random_codes(100, sizes), num_candidates=0)
    n, storages = batch.n_tokens, {}

    def pack(t):
        if t.dim() > 0 and t.shape[0] in (n, batch.gen_index.numel()) and not isinstance(t, torch.nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch)
    measured = sum(storages.values()) / n
    predicted = activation_bytes(cfg, sizes, n, "fp32", checkpointing=ckpt) / n
    if ckpt:
        predicted -= 4 * activation_elements_per_token(cfg, sizes)[0]
    assert abs(measured / predicted - 1) < 0.15, (measured, predicted)


def test_fp32_states_are_16_bytes_per_param():
    assert sum(model_state_bytes(1000, 10, 0, 1, "fp32")) == 16_000
    assert sum(model_state_bytes(1000, 10, 3, 4, "fp32")) == 16_000 / 4 + 8 * 10


def test_plan_command_prints_a_table_and_writes_json(tmp_path, capsys):
    from e2erec.cli import main

    out = tmp_path / "plan.json"
    png = tmp_path / "plan.png"
    args = ["--micro-batch-tokens", "2048", "--json", str(out), "--plot", str(png)]
    assert main(["plan", "model=tiny", "--gpus", "4", *args]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "parameters: 264,769" in printed and "ZeRO" in printed
    data = json.loads(out.read_text())
    assert data["num_params"] == 264_769 and data["gpus"] == 4 and len(data["stages_bytes_per_gpu"]) == 4
    assert data["stages_bytes_per_gpu"][3]["total"] < data["stages_bytes_per_gpu"][0]["total"]
    assert main(["plan", "--gpus", "0"]) == 2
    assert "--gpus must be >= 1" in capsys.readouterr().err


def test_model_bench_runs_and_writes_json_and_plot(tmp_path, capsys):
    from e2erec.model.bench import main

    args = ["--n-seqs", "2", "--mean-len", "6", "--beams", "3", "--candidates", "2", "--repeats", "1"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench_model.json").read_text())
    assert len(result["train"]) == 4 and all(r["tokens_per_s"] > 0 for r in result["train"])
    assert (tmp_path / "bench_model.png").read_bytes()[:4] == b"\x89PNG"
    assert "tokens/s" in capsys.readouterr().out
