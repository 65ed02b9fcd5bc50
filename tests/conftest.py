"""Suite-wide settings for running the tests in parallel (pytest-xdist; ./run_tests.sh starts one worker per core).

Each worker gets its share of the cores (torch threads, and OMP_NUM_THREADS for the processes a test starts), so two
workers on two cores do not oversubscribe them; and the slow tests are collected first, so the longest (the
end-to-end run of ./run_all.sh) starts at once instead of last."""

from __future__ import annotations

import os


def pytest_configure(config):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = str(max(1, len(os.sched_getaffinity(0)) // workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = share
        import torch

        torch.set_num_threads(int(share))


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow tests first, order kept
