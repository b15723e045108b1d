"""Row sharding across real gloo ranks (spawned processes): every row computed once, in order, whatever the world."""

from __future__ import annotations

import itertools
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from e2erec.utils.shards import shard_bounds, sharded_rows


def test_shard_bounds_cover_the_rows_once():
    for n in (0, 1, 5, 16):
        for world in (1, 2, 3, 7):
            blocks = [shard_bounds(n, r, world) for r in range(world)]
            assert blocks[0][0] == 0 and blocks[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
            assert max(h - lo for lo, h in blocks) - min(h - lo for lo, h in blocks) <= 1


def _worker(rank: int, world: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    calls = []

    def fn(lo, hi):
        calls.append((lo, hi))
        rows = np.arange(lo, hi)
        return torch.from_numpy(rows * 10), rows.astype(float) / 2, None

    results = {n: sharded_rows(fn, n) for n in (2, 7)}  # 2 rows on 3 ranks: one rank idles
    proba = sharded_rows(lambda lo, hi: None, 5)  # a system without probabilities stays None
    out.put((rank, calls, {n: (r[0].tolist(), r[1].tolist(), r[2]) for n, r in results.items()}, proba))
    dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_rows_on_three_gloo_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.start_processes(_worker, args=(3, port, out), nprocs=3, start_method="spawn", join=True)
    got = sorted(out.get(timeout=60) for _ in range(3))
    computed = [c for _, calls, _, _ in got for c in calls]
    assert sorted(computed) == [(0, 1), (0, 3), (1, 2), (3, 5), (5, 7)]  # each row once; rank 2 idle at n = 2
    for _, _, results, proba in got:  # every rank has the whole result, in row order
        assert results[2] == ([0, 10], [0.0, 0.5], None)
        assert results[7] == ([i * 10 for i in range(7)], [i / 2 for i in range(7)], None)
        assert proba is None
