"""Fault injection: the real training and evaluation paths meet damaged files, a full disk and a dead rank.

The training fixtures (semantic IDs built once, the in-process gloo group, one torch thread) are the training
tests' own.
"""

from train.conftest import _one_thread, dist_info, sids_dir  # noqa: F401
