"""Model tests run single-threaded: their tensors are tiny, and two intra-op threads on a shared 2-core machine
measured 3-10x slower per step (thread contention) than one."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
