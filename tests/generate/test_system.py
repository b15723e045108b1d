"""GenerativeSystem helpers: the histories exclude-seen reads, and where the search runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from e2erec.errors import E2ERecError
from e2erec.generate.system import _history_items, resolve_device


def test_history_items_are_each_users_events_up_to_the_end(ml100k, ml100k_split):
    targets = np.asarray(ml100k_split.test[:50])
    users = np.searchsorted(ml100k.offsets, targets, side="right") - 1
    offsets, items = _history_items(ml100k, users, targets)
    expected = [ml100k.item[ml100k.offsets[u]:t] for u, t in zip(users, targets)]
    assert offsets.tolist() == np.concatenate([[0], np.cumsum([len(x) for x in expected])]).tolist()
    assert items.tolist() == np.concatenate(expected).tolist()


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(E2ERecError, match="no CUDA device"):
            resolve_device("cuda")
