"""A pool process is judged by the memory it holds after a task, not by its peak."""

from __future__ import annotations

import resource

import numpy as np
from billiard import pool as billiard_pool

from worker.celery_app import current_rss_kb


def test_the_recycle_check_reads_current_memory_not_the_peak() -> None:
    block = np.ones(400 * 1024**2 // 8)  # 400 MiB, touched
    assert block.sum() > 0
    del block
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert billiard_pool.mem_rss is current_rss_kb
    assert billiard_pool.mem_rss() < peak_kb - 300 * 1024
