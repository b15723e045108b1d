"""Capacity planning: parameters, training FLOPs per token and memory per GPU for each ZeRO stage.

The model is instantiated on the meta device (no memory, any size). Memory per GPU is model states + activations:

Model states, bytes per parameter, as DeepSpeed's own estimators count them
(``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`` and
``stage3.estimate_zero3_model_states_mem_needs``, cross-checked in tests/model/test_plan.py). Mixed precision
(bf16) with Adam keeps 16-bit params (2) + 16-bit grads (2) + fp32 grads (4) + fp32 master params (4) + fp32 Adam
moments (8) = 20 bytes/param; ZeRO (Rajbhandari et al. 2020) shards them over the N data-parallel GPUs:

    stage 0: 20 P                          stage 2: 2 P + 18 P / N
    stage 1: 4 P + 16 P / N                stage 3: 18 P / N + 4 * largest_layer   (its 16-bit params + grads
                                                                                     gathered while it runs)

DeepSpeed's stage-3 estimator counts 18 (not 20) bytes per sharded parameter and does not split them into
params / grads / optimizer; we show 2 + 2 + 14 so the columns add up to its total.

fp32 training has no 16-bit copies: 4 (params) + 4 (grads) + 8 (Adam) = 16 bytes/param, sharded the same way.

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", counted
for our blocks, attention by a fused kernel so no tokens x tokens matrix is stored), elements per token and layer:

    transformer block: 8 d + 4 h       (x, norm(x), q, k, v, attention out, x', norm(x'), w1 x, silu(w1 x), w3 x, product)
    HSTU block:        13 d            (x, norm(x), f1 x, u|v|q|k, attention out, norm(out), norm(out) * u)

plus the heads per token: embeddings/final norm 3 d, decoder (L - 1) (3 d + 4 h) + L (2 d), and the code logits
in fp32 (2 * sum(K_l) * 4 bytes: logits and log-softmax). With activation checkpointing only each block's input
(d per token and layer) is kept, plus one block's full activations while it is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from e2erec.model.config import ModelConfig
from e2erec.model.model import GenerativeRecommender

GiB = float(1 << 30)


@dataclass
class StagePlan:
    stage: int
    params: float  # bytes per GPU
    grads: float
    optimizer: float  # fp32 master params (mixed precision) + Adam moments
    activations: float
    activations_ckpt: float

    @property
    def model_states(self) -> float:
        return self.params + self.grads + self.optimizer

    @property
    def total(self) -> float:
        return self.model_states + self.activations

    @property
    def total_ckpt(self) -> float:
        return self.model_states + self.activations_ckpt


@dataclass
class Plan:
    cfg: ModelConfig
    codebook_sizes: list[int]
    gpus: int
    micro_batch_tokens: int
    seq_len: int
    precision: str
    num_params: int
    non_embedding_params: int
    largest_layer_params: int
    flops_per_token: float
    stages: list[StagePlan]

    def table(self) -> str:
        """The plan as a text table (GiB per GPU)."""
        head = (
            f"model {self.cfg.name} ({self.cfg.backbone}, d_model={self.cfg.d_model}, n_layers={self.cfg.n_layers}, "
            f"n_heads={self.cfg.n_heads}), codebook {self.codebook_sizes}"
        )
        counts = (
            f"parameters: {self.num_params:,} ({self.non_embedding_params:,} non-embedding); "
            f"largest layer {self.largest_layer_params:,}"
        )
        flops = (
            f"training FLOPs per token (fwd+bwd, {self.seq_len} tokens/sequence): {self.flops_per_token:.3e}; "
            f"per micro-batch of {self.micro_batch_tokens:,} tokens: {self.flops_per_token * self.micro_batch_tokens:.3e}"
        )
        columns = (
            f"{'ZeRO':>4}  {'params':>9}  {'grads':>9}  {'optim':>9}  {'activ':>9}  {'activ+ckpt':>10}  "
            f"{'total':>9}  {'total+ckpt':>10}"
        )
        lines = [head, counts, flops, f"memory per GPU, {self.gpus} GPU(s), {self.precision} + Adam, GiB:", "", columns]
        for s in self.stages:
            lines.append(
                f"{s.stage:>4}  {s.params / GiB:>9.3f}  {s.grads / GiB:>9.3f}  {s.optimizer / GiB:>9.3f}  "
                f"{s.activations / GiB:>9.3f}  {s.activations_ckpt / GiB:>10.3f}  {s.total / GiB:>9.3f}  "
                f"{s.total_ckpt / GiB:>10.3f}"
            )
        lines.append("")
        lines.append("optim: fp32 master params, fp32 grads (bf16) and Adam moments; ZeRO-3 params/grads include the "
                     "gathered largest layer")
        lines.append("activ: one micro-batch, fused attention (no tokens x tokens matrix); "
                     "+ckpt: model.activation_checkpointing=true")
        return "\n".join(lines)


def plot_plan(plan: Plan, path: str) -> None:
    """Stacked bars of GiB per GPU for ZeRO 0-3, without and with activation checkpointing (PNG, atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from e2erec.utils.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4))
    parts = [("params", "params"), ("grads", "grads"), ("optimizer", "optimizer states")]
    for offset, ckpt in ((-0.2, False), (0.2, True)):
        x = [s.stage + offset for s in plan.stages]
        bottom = [0.0] * len(plan.stages)
        for i, (attr, label) in enumerate(parts):
            values = [getattr(s, attr) / GiB for s in plan.stages]
            ax.bar(x, values, 0.38, bottom=bottom, color=f"C{i}", label=label if not ckpt else None)
            bottom = [b + v for b, v in zip(bottom, values)]
        act = [(s.activations_ckpt if ckpt else s.activations) / GiB for s in plan.stages]
        ax.bar(x, act, 0.38, bottom=bottom, color="C3", alpha=0.5 if ckpt else 1.0,
               label="activations (+ckpt: light)" if ckpt else "activations")
    ax.set_xticks(range(4), [f"ZeRO-{s.stage}" for s in plan.stages])
    ax.set_ylabel("GiB per GPU")
    ax.set_title(f"{plan.cfg.name}: {plan.num_params / 1e6:,.1f}M params, {plan.gpus} GPU(s), "
                 f"{plan.micro_batch_tokens:,} tokens/micro-batch, {plan.precision}\n(left: no checkpointing, "
                 f"right: activation checkpointing)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def largest_layer_params(model: torch.nn.Module) -> int:
    """Largest parameter count held directly by one module (what ZeRO-3 gathers at once), as DeepSpeed counts it."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def model_state_bytes(num_params: int, largest_layer: int, stage: int, gpus: int, precision: str = "bf16"):
    """(params, grads, optimizer) bytes per GPU for one ZeRO stage (module docstring)."""
    P, N = float(num_params), float(gpus)
    if precision == "bf16":
        # 16-bit params / grads; fp32 grads + master params + Adam moments = 16 bytes ("optimizer" here).
        if stage == 0:
            return 2 * P, 2 * P, 16 * P
        if stage == 1:
            return 2 * P, 2 * P, 16 * P / N
        if stage == 2:
            return 2 * P, 2 * P / N, 16 * P / N
        return 2 * P / N + 2 * largest_layer, 2 * P / N + 2 * largest_layer, 14 * P / N
    if stage == 0:
        return 4 * P, 4 * P, 8 * P
    if stage == 1:
        return 4 * P, 4 * P, 8 * P / N
    if stage == 2:
        return 4 * P, 4 * P / N, 8 * P / N
    return 4 * P / N + 4 * largest_layer, 4 * P / N + 4 * largest_layer, 8 * P / N


def activation_elements_per_token(cfg: ModelConfig, codebook_sizes: list[int]) -> tuple[float, float, float]:
    """(per block, heads and embeddings, fp32 logits) activation elements stored per token (module docstring)."""
    d, h, L = cfg.d_model, cfg.ffn_hidden, len(codebook_sizes)
    block = 8 * d + 4 * h if cfg.backbone == "transformer" else 13 * d
    heads = 3 * d + (L - 1) * (3 * d + 4 * h) + L * 2 * d
    logits = 2 * sum(codebook_sizes)
    return block, heads, logits


def activation_bytes(cfg: ModelConfig, codebook_sizes: list[int], tokens: int, precision: str = "bf16",
                     checkpointing: bool = False) -> float:
    """Activation bytes of one micro-batch of ``tokens`` tokens, with or without activation checkpointing."""
    width = 2 if precision == "bf16" else 4
    block, heads, logits = activation_elements_per_token(cfg, codebook_sizes)
    layers = (cfg.n_layers * cfg.d_model + block) if checkpointing else cfg.n_layers * block
    return tokens * ((layers + heads) * width + logits * 4)


def make_plan(cfg: ModelConfig, codebook_sizes: list[int], gpus: int, micro_batch_tokens: int,
              seq_len: int | None = None, precision: str = "bf16") -> Plan:
    """Instantiate ``cfg`` on the meta device and estimate FLOPs and memory per GPU for ZeRO stages 0-3."""
    if gpus < 1 or micro_batch_tokens < 1:
        raise ValueError(f"gpus and micro_batch_tokens must be >= 1, got {gpus} and {micro_batch_tokens}")
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be bf16 or fp32, got {precision!r}")
    with torch.device("meta"):
        model = GenerativeRecommender(cfg, codebook_sizes)
    seq_len = min(cfg.max_tokens_per_seq, micro_batch_tokens) if seq_len is None else seq_len
    total, largest = model.num_params(), largest_layer_params(model)
    act = activation_bytes(cfg, codebook_sizes, micro_batch_tokens, precision, checkpointing=False)
    act_ckpt = activation_bytes(cfg, codebook_sizes, micro_batch_tokens, precision, checkpointing=True)
    stages = [
        StagePlan(stage, *model_state_bytes(total, largest, stage, gpus, precision), act, act_ckpt)
        for stage in range(4)
    ]
    return Plan(
        cfg=cfg, codebook_sizes=list(codebook_sizes), gpus=gpus, micro_batch_tokens=micro_batch_tokens,
        seq_len=seq_len, precision=precision, num_params=total, non_embedding_params=model.num_params(True),
        largest_layer_params=largest, flops_per_token=model.flops_per_token(seq_len), stages=stages,
    )
