"""Peak resident memory (``VmHWM``) of other processes, sampled while they work.

The fits worker may replace its pool process right after a fit (Celery's
``worker_max_memory_per_child``), so the peak is sampled by a thread during the fit rather
than read once afterwards, and the process list is refreshed on every sample.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

INTERVAL_S = 0.05


def reset_peak_rss(processes: list[psutil.Process]) -> bool:
    """Reset VmHWM of ``processes`` (``clear_refs`` 5); False where the kernel refuses."""
    try:
        for process in processes:
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb(processes: list[psutil.Process]) -> float | None:
    """The largest VmHWM among those of ``processes`` still running, in MB."""
    peaks = []
    for process in processes:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:
            continue
        peaks += [int(line.split()[1]) / 1024 for line in status.splitlines() if "VmHWM:" in line]
    return max(peaks, default=None)


@dataclass
class PeakRss:
    """The largest VmHWM seen so far, and the pids of the processes it was sampled from."""

    mb: float | None = None
    pids: list[int] = field(default_factory=list)

    def sample(self, processes: list[psutil.Process]) -> None:
        """Read the processes' VmHWM once and keep the maximum."""
        self.pids += [p.pid for p in processes if p.pid not in self.pids]
        peak = peak_rss_mb(processes)
        if peak is not None:
            self.mb = peak if self.mb is None else max(self.mb, peak)


@contextmanager
def watch_peak_rss(processes: Callable[[], list[psutil.Process]]) -> Iterator[PeakRss]:
    """Sample the peak of ``processes()`` every :data:`INTERVAL_S` until the block ends."""
    peak = PeakRss()
    stop = threading.Event()

    def sample() -> None:
        while True:
            with suppress(psutil.Error):
                peak.sample(processes())
            if stop.wait(INTERVAL_S):
                return

    thread = threading.Thread(target=sample, name="peak-rss", daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        with suppress(psutil.Error):
            peak.sample(processes())
