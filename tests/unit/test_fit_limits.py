"""A run that must stop (cancelled, past its time, over its memory, its fit taken over) is
stopped in whatever phase it is: sampling stops by itself; a phase that cannot be
interrupted gets a second's grace (memory: none) before the watchdog ends the process;
a run that has begun to record its end is left to finish."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from service.core.errors import FitFailed
from service.core.schemas import FitResource, FitStatus, ResolvedSampler
from worker import fitting
from worker.fitting import FitRun


def run(monkeypatch: pytest.MonkeyPatch) -> FitRun:
    record = FitResource(
        id="0" * 32,
        status=FitStatus.RUNNING,
        formula="y ~ 1",
        family="gaussian",
        n_obs=1,
        sampler=ResolvedSampler(
            draws=1, tune=1, chains=1, seed=1, target_accept=0.8, method="nutpie"
        ),
        created_at=datetime.now(UTC),
    )
    monkeypatch.setattr(fitting, "STOP_GRACE_S", 0.2)
    monkeypatch.setattr(fitting, "SAMPLING_GRACE_S", 0.6)
    return FitRun(record.id, record, SimpleNamespace(), "token")  # type: ignore[arg-type]


@pytest.mark.parametrize(("phase", "grace"), [("compiling", 0.2), ("summarizing", 0.2),
                                             ("sampling", 0.6)])  # fmt: skip
def test_a_phase_gets_its_grace_then_is_overdue(
    monkeypatch: pytest.MonkeyPatch, phase: str, grace: float
) -> None:
    fit = run(monkeypatch)
    fit.enter(phase)
    fit.ask_stop("cancelled")
    assert fit.overdue() is None
    time.sleep(grace + 0.05)
    assert fit.overdue() == "cancelled"
    assert fit.overdue() is None  # decided once: the watchdog ends the run


def test_memory_gets_no_grace_outside_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    fit = run(monkeypatch)
    fit.enter("summarizing")
    fit.ask_stop("out_of_memory")
    assert fit.overdue() == "out_of_memory"


def test_the_first_reason_stands_and_checkpoints_raise_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fit = run(monkeypatch)
    fit.ask_stop("timeout")
    fit.ask_stop("cancelled")
    assert fit.stop_reason() == "timeout"
    with pytest.raises(FitFailed) as caught:
        fit.checkpoint()
    assert caught.value.reason == "timeout"


def test_a_run_recording_its_end_is_left_to_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    fit = run(monkeypatch)
    fit.enter("summarizing")
    fit._start_finishing()
    fit.ask_stop("cancelled")  # the atomic finish will see the cancel flag itself
    time.sleep(0.3)
    assert fit.overdue() is None


def test_a_stop_asked_before_finishing_prevents_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fit: Any = run(monkeypatch)
    fit.ask_stop("timeout")
    with pytest.raises(FitFailed):
        fit._start_finishing()
