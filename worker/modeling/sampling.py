"""Sample a Bambi model's posterior with nutpie, reporting progress as it goes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bambi as bmb
import numpy as np
import nutpie
import xarray as xr

from service.core.errors import FitFailed
from service.core.schemas import ChainProgress, Progress, ResolvedSampler, SamplerRun
from worker.modeling.compiled import CompiledModels, lift
from worker.patches import clean_results

ProgressSink = Callable[[Progress], None]
log = logging.getLogger(__name__)

#: Seconds between progress reports written to the job record.
PROGRESS_INTERVAL_S = 0.5
#: Seconds between looks at whether the sampler has finished (a seed-study fit samples in
#: about 0.1 s: waiting for the next progress report would make it 0.5 s).
FINISHED_POLL_S = 0.01


@dataclass
class SampleResult:
    """Posterior draws and sampler statistics, with the time each phase took."""

    posterior: xr.Dataset
    sample_stats: xr.Dataset
    build_s: float
    compile_s: float
    sampling_s: float
    compiled_now: bool = True
    likelihood: str = "row_wise"


def stored_variables(model: bmb.Model) -> list[str]:
    """Variables worth keeping: every free parameter and deterministic except per-row ones."""
    pm_model = model.backend.model
    names = [rv.name for rv in pm_model.free_RVs]
    for det in pm_model.deterministics:
        dims = pm_model.named_vars_to_dims.get(det.name, ())
        if "__obs__" not in dims:
            names.append(det.name)
    return names


def sample(
    model: bmb.Model,
    sampler: ResolvedSampler,
    report: ProgressSink,
    *,
    compiled_models: CompiledModels | None = None,
    centre_on: str | None = None,
    cores: int | None = None,
    stop_reason: Callable[[], str | None] = lambda: None,
) -> SampleResult:
    """Compile the model with nutpie and sample it; ``report`` receives throttled progress.

    With ``compiled_models``, a model whose structure was compiled before is not compiled
    again: its data and prior parameters are fed to the compiled one (see ``compiled``).

    ``stop_reason`` is asked twice a second while sampling (and once after compiling); a
    reason (``cancelled``, ``timeout``) stops the sampler and raises FitFailed with it.
    """
    started = time.perf_counter()
    report(Progress(phase="compiling", fraction=0.0))
    try:
        model.build()
    except Exception as exc:
        log.info("model build failed", exc_info=True)
        raise FitFailed("model_error", "the model could not be built from this data") from exc
    built = time.perf_counter()
    try:
        compiled_models = compiled_models or CompiledModels(size=1)
        lifted = lift(model, centre_on)
        compiled, compiled_now = compiled_models.get(lifted, stored_variables(model))
    except Exception as exc:
        log.warning("compiling failed", exc_info=True)
        raise FitFailed("compile_error", "the model could not be compiled") from exc
    compiled_at = time.perf_counter()
    _stop_if_asked(stop_reason)

    latest: list[Any] = []
    lock = threading.Lock()

    def on_progress(chains: list[Any]) -> None:
        with lock:
            latest[:] = chains

    try:
        run = nutpie.sample(
            compiled,
            draws=sampler.draws,
            tune=sampler.tune,
            chains=sampler.chains,
            cores=cores or sampler.chains,
            seed=sampler.seed,
            target_accept=sampler.target_accept,
            adaptation=sampler.adaptation,
            save_warmup=False,
            progress_bar=False,
            progress_callback=on_progress,
            progress_rate=int(PROGRESS_INTERVAL_S * 1000),
            blocking=False,
        )
        report(Progress(phase="sampling", fraction=0.0))
        try:
            next_look = 0.0
            while not _finished(run):
                if time.monotonic() >= next_look:
                    _watch(stop_reason, report, latest, lock)
                    next_look = time.monotonic() + PROGRESS_INTERVAL_S
                time.sleep(FINISHED_POLL_S)
        except BaseException:
            run.cancel()  # never leave chains sampling in the background
            raise
        trace = _labelled(run.wait(), model)
        trace = clean_results(model, trace)  # Bambi's own post-processing (see patches)
    except FitFailed:
        raise
    except Exception as exc:
        log.warning("sampling failed", exc_info=True)
        raise FitFailed(
            "sampling_error", "sampling failed: the posterior could not be explored"
        ) from exc
    finished = time.perf_counter()
    return SampleResult(
        posterior=trace["posterior"].to_dataset(),
        sample_stats=trace["sample_stats"].to_dataset(),
        build_s=built - started,
        compile_s=compiled_at - built,
        sampling_s=finished - compiled_at,
        compiled_now=compiled_now,
        likelihood=lifted.likelihood,
    )


def _labelled(trace: Any, model: bmb.Model) -> Any:
    """The trace with this fit's own coordinate labels (a reused compiled model carries
    the labels of the data it was compiled with)."""
    posterior = trace["posterior"]
    labels = {
        dim: np.asarray(values)
        for dim, values in model.backend.model.coords.items()
        if dim in posterior.dims and values is not None
    }
    trace["posterior"] = posterior.to_dataset().assign_coords(labels)
    return trace


STOP_MESSAGES = {
    "cancelled": "the fit was cancelled",
    "lock_lost": "the fit's run lock was lost; another run has taken over",
    "timeout": "the fit ran past its time limit",
    "out_of_memory": "the fit needed more memory than a fit may use; use fewer draws or "
    "a smaller model",
}


def _stop_if_asked(stop_reason: Callable[[], str | None]) -> None:
    reason = stop_reason()
    if reason is not None:
        raise FitFailed(reason, STOP_MESSAGES.get(reason, reason))


def _watch(
    stop_reason: Callable[[], str | None],
    report: ProgressSink,
    latest: list[Any],
    lock: threading.Lock,
) -> None:
    """One look at a running sampler: stop if asked, report progress. A passing failure to
    reach Redis only skips this look; it does not fail the fit."""
    try:
        _stop_if_asked(stop_reason)
        with lock:
            snapshot = list(latest)
        if snapshot:
            report(_progress(snapshot))
    except FitFailed:
        raise
    except Exception:
        log.warning("could not check or report progress this time", exc_info=True)


def _finished(run: Any) -> bool:
    """Whether nutpie's background sampler is done (it times out while busy: not done)."""
    try:
        return bool(run.is_finished)
    except TimeoutError:
        return False


def _progress(chains: list[Any]) -> Progress:
    rows = [
        ChainProgress(
            chain=i,
            draws_done=int(c.finished_draws),
            draws_total=int(c.total_draws),
            tuning=bool(c.tuning),
            divergences=int(c.divergences),
        )
        for i, c in enumerate(chains)
    ]
    total = sum(r.draws_total for r in rows) or 1
    return Progress(phase="sampling", fraction=sum(r.draws_done for r in rows) / total, chains=rows)


#: More than this share of divergent draws fails the verdict, and asks for a second run.
DIVERGENT_SHARE = 0.01
#: The highest target acceptance rate a second run goes to.
MAX_TARGET_ACCEPT = 0.99


def raised_target_accept(target_accept: float) -> float:
    """The second run's target: a quarter of the first's rejection rate (0.8 -> 0.95,
    0.95 -> 0.9875), at most ``MAX_TARGET_ACCEPT``."""
    return min(MAX_TARGET_ACCEPT, 1 - (1 - target_accept) / 4)


def divergences(result: SampleResult) -> int:
    """Divergent draws of all chains."""
    stats = result.sample_stats
    return int(stats["diverging"].sum()) if "diverging" in stats else 0


def sample_with_refit(
    model: bmb.Model, sampler: ResolvedSampler, report: ProgressSink, **options: Any
) -> tuple[SampleResult, list[SamplerRun]]:
    """``sample``; then, when more than 1% of the draws diverged and the sampler allows it,
    once more at a higher target acceptance rate (smaller steps), as a Stan user raises
    adapt_delta. The result is the last run's; every run's figures come with it."""
    result = sample(model, sampler, report, **options)
    runs = [_figures(result, sampler.target_accept)]
    raised = raised_target_accept(sampler.target_accept)
    diverged = runs[0].divergences > DIVERGENT_SHARE * runs[0].draws
    if diverged and sampler.refit_divergent and raised > sampler.target_accept:
        log.info("%d divergent draws at %.3f: sampling again at %.4f", runs[0].divergences,
                 sampler.target_accept, raised)  # fmt: skip
        second = sampler.model_copy(update={"target_accept": raised})
        result = sample(model, second, report, **options)
        runs.append(_figures(result, raised))
    return result, runs


def _figures(result: SampleResult, target_accept: float) -> SamplerRun:
    stats = result.sample_stats
    return SamplerRun(
        target_accept=target_accept,
        divergences=divergences(result),
        draws=stats.sizes["chain"] * stats.sizes["draw"],
        sampling_s=round(result.sampling_s, 3),
    )
