"""Process-group setup for every launcher e2erec supports, plus the few collectives the training loop needs.

One code path serves: a plain `python`/`e2erec train` process (world size 1), `torchrun`, the `deepspeed` launcher
(both export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT), and Slurm with one `srun` task per rank (we map
SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and read MASTER_ADDR/MASTER_PORT from the sbatch script). On CUDA the backend
is NCCL, on a CPU-only machine gloo, so CI exercises the real multi-process ZeRO code.

We initialise `torch.distributed` ourselves, before `deepspeed.initialize`, so that the single-process case needs no
launcher (DeepSpeed would otherwise try MPI discovery) and so that every launcher goes through the same lines.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_env() -> dict[str, str]:
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from torchrun, the deepspeed launcher, Slurm, or defaults.

    Slurm (srun per task) sets SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID; the sbatch script exports MASTER_ADDR (the
    first host of `scontrol show hostnames`) and MASTER_PORT. A torchrun started by srun sets RANK itself, which wins.
    """
    env = {}
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        env["RANK"], env["WORLD_SIZE"] = os.environ["RANK"], os.environ["WORLD_SIZE"]
        env["LOCAL_RANK"] = os.environ.get("LOCAL_RANK", "0")
    elif "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        env["RANK"], env["WORLD_SIZE"] = os.environ["SLURM_PROCID"], os.environ["SLURM_NTASKS"]
        env["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
        # "2" or "2(x3)" (2 tasks on each of 3 nodes): the ranks sharing this host.
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE", os.environ["SLURM_NTASKS"]).split("(")[0]
        env["LOCAL_WORLD_SIZE"] = os.environ.get("LOCAL_WORLD_SIZE", per_node)
    else:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    env["MASTER_ADDR"] = os.environ.get("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" in os.environ:
        env["MASTER_PORT"] = os.environ["MASTER_PORT"]
    elif env["WORLD_SIZE"] == "1":
        env["MASTER_PORT"] = str(_free_port())  # a lone process may share the host with other jobs on 29500
    elif "SLURM_JOB_ID" in os.environ:
        env["MASTER_PORT"] = str(29500 + int(os.environ["SLURM_JOB_ID"]) % 1000)
    else:
        env["MASTER_PORT"] = "29500"
    return env


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Initialise (or join an already initialised) process group and pick this rank's device.

    `device`: "auto" = CUDA when available, else CPU. Sets the environment DeepSpeed reads (RANK, ...) so that
    `deepspeed.initialize` finds the group ready instead of probing for MPI.
    """
    env = launcher_env()
    os.environ.update(env)
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch sees no CUDA device")
    if not use_cuda:
        # Must precede `import deepspeed`: it picks its accelerator once, at import.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    local_rank = int(env["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend, rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]), timeout=timedelta(seconds=timeout_s)
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend)


def join_launched_group(device: str = "auto") -> tuple[int, int]:
    """(rank, world size) of a process started by torchrun, srun or the deepspeed launcher, after joining its
    process group; (0, 1) for a plain process, which creates no group. For commands that shard work by rows
    (`e2erec eval`, `e2erec generate`)."""
    if int(launcher_env()["WORLD_SIZE"]) <= 1:
        return 0, 1
    info = init_distributed("cpu" if device == "cpu" else "auto")
    return info.rank, info.world_size


def skip_cpu_shm_comm_build() -> None:
    """Stop DeepSpeed from JIT-compiling its CPU shared-memory comm op (~60 s of gcc on every fresh machine).

    deepspeed 0.19.8 `comm/torch.py` builds `deepspeed_shm_comm` in `TorchBackend.__init__` whenever
    `deepspeed.ops.__compatible_ops__` says it can, even when the process group already exists, and no environment
    variable turns it off. The op only serves `inference_all_reduce` (tensor-parallel inference); training
    collectives go through `torch.distributed` either way, so on CPU we mark it incompatible in that cached dict
    (DeepSpeed documents the dict as persistent). A machine that prebuilt it (DS_BUILD_SHM_COMM=1) loses nothing.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def all_agree(flag: bool, device: torch.device) -> bool:
    """True on every rank iff `flag` is true on every rank (so all ranks skip a bad step or stop together)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([0 if flag else 1], device=device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item()) == 0


def any_rank(flag: bool, device: torch.device) -> bool:
    return not all_agree(not flag, device)


def all_sum(values: list[float], device: torch.device) -> list[float]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown(clean: bool = True) -> None:
    """gloo sometimes aborts a rank at exit (status 134) unless a barrier precedes the teardown (shared/notes).
    After an error (`clean=False`) there is no barrier: the peers may never reach it; closing the group makes
    their pending collectives fail instead of waiting for the timeout."""
    if dist.is_initialized():
        if clean:
            barrier()
        dist.destroy_process_group()


ALIVE_WAIT_S = 5.0  # how long survivors of a failed collective wait for each other's roll call


def is_comm_failure(error: BaseException) -> bool:
    """A collective that failed because a peer died, hung or lost the network (gloo reports it as RuntimeError)."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(s in text for s in (
        "gloo/transport", "Connection reset by peer", "Connection closed by peer", "NCCL", "Timed out", "timed out"))


def lost_ranks(error: BaseException, wait_s: float = ALIVE_WAIT_S) -> str | None:
    """After `error` in a process group of several ranks: None unless a collective failed (`is_comm_failure`); else
    which ranks are gone, by a roll call through the rendezvous store (a TCP server on rank 0, independent of the
    broken collective's connections). A rank that does not answer within `wait_s` was killed, crashed or is stuck."""
    if not (dist.is_initialized() and dist.get_world_size() > 1 and is_comm_failure(error)):
        return None
    rank, world_size = dist.get_rank(), dist.get_world_size()
    try:
        store = dist.distributed_c10d._get_default_store()  # no public accessor; any failure only loses the names
        store.set(f"e2erec/alive/{rank}", "1")
        deadline = time.time() + wait_s
        while True:
            gone = [r for r in range(world_size) if not store.check([f"e2erec/alive/{r}"])]
            if not gone or time.time() >= deadline:
                break
            time.sleep(0.1)
    except (RuntimeError, OSError):  # the store itself is gone (DistStoreError): it lives in rank 0's process
        return "rank 0 is gone (its rendezvous store no longer answers)"
    if not gone:
        return "every rank still answers the roll call, so one is stuck in another collective"
    return f"rank{'s' if len(gone) > 1 else ''} {', '.join(map(str, gone))} of {world_size} " \
           f"{'are' if len(gone) > 1 else 'is'} gone (killed, crashed or stuck)"
