"""The blocking client: ``Client`` and the ``Fit`` handle it returns. Each method runs one
plan of ``_core`` with an ``httpx.Client``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import httpx

from hbm_client._core import Core
from hbm_client._models import (
    Comparison,
    Diagnostics,
    FitResource,
    GroupEffects,
    Loo,
    Ppc,
    Predictions,
    Summary,
)
from hbm_client._named import Models
from hbm_client._plans import Plan, run_sync
from hbm_client._requests import FitOptions, Prior, Sampler
from hbm_client._retry import RetryPolicy

DEFAULT_URL = "http://127.0.0.1:8000"


class Client:
    """A client of one hbm-service.

    ``api_key`` is sent as ``X-API-Key``; ``timeout`` bounds each HTTP request (not the wait
    for a fit); 429 and 503 answers and connection errors are retried up to
    ``max_retries`` times, after the service's ``Retry-After`` or a growing backoff.
    ``transport`` replaces httpx's (tests pass an ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._core = Core(base_url, api_key, RetryPolicy(max_retries=max_retries))
        self._http = httpx.Client(timeout=timeout, transport=transport)
        #: The key's named models (promote, get, list, rollback, predict, delete).
        self.models = Models(self)

    def _run[T](self, plan: Plan[T]) -> T:
        return run_sync(plan, self._http)

    def fit(
        self,
        data: Any,
        formula: str,
        *,
        family: str | None = None,
        link: str | None = None,
        priors: Mapping[str, Prior | Mapping[str, Any]] | None = None,
        sampler: Sampler | Mapping[str, Any] | None = None,
        name: str | None = None,
        categorical: Mapping[str, Sequence[Any] | None] | None = None,
        na_action: Literal["error", "drop"] | None = None,
        wait: bool = True,
        progress: bool = True,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Fit:
        """Submit a fit of ``formula`` to ``data`` (a pandas DataFrame, a mapping of columns
        or a list of records) and, with ``wait``, wait until it has succeeded (FitFailed if
        it fails; TimeoutError after ``timeout`` seconds), showing each chain's draws when
        ``progress`` and tqdm is installed. Unset options take the service's defaults;
        ``options`` are further fields of the request (``distributional``...)."""
        request = FitOptions.given(
            formula=formula,
            family=family,
            link=link,
            priors=priors,
            sampler=sampler,
            name=name,
            categorical=categorical,
            na_action=na_action,
            **options,
        )
        fit = Fit(self, self._run(self._core.submit(data, request, idempotency_key)))
        if wait:
            fit.wait(progress=progress, timeout=timeout)
        return fit

    def get_fit(self, fit_id: str) -> Fit:
        """A handle on an existing fit (NotFound if there is none)."""
        return Fit(self, self._run(self._core.get_fit(fit_id)))

    def list_fits(self, offset: int = 0, limit: int = 20) -> list[Fit]:
        """The key's fits, newest first."""
        return [Fit(self, r) for r in self._run(self._core.list_fits(offset, limit))]

    def compare(self, fits: Sequence[Fit | str]) -> Comparison:
        """Rank 2 to 10 fits of the same data by PSIS-LOO."""
        return self._run(self._core.compare([f if isinstance(f, str) else f.id for f in fits]))

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Fit:
    """A fit on the service: ``resource`` is its record as last read; each result method
    asks the service (NotReady until the fit has succeeded)."""

    def __init__(self, client: Client, resource: FitResource) -> None:
        self._client = client
        self._core = client._core
        self.resource = resource

    @property
    def id(self) -> str:
        """The fit's id."""
        return self.resource.id

    @property
    def status(self) -> str:
        """Its status when last read: queued, running, succeeded, failed or cancelled."""
        return self.resource.status

    def __repr__(self) -> str:
        return f"Fit(id={self.id!r}, status={self.status!r}, formula={self.resource.formula!r})"

    def refresh(self) -> FitResource:
        """Read the fit's record again."""
        self.resource = self._client._run(self._core.get_fit(self.id))
        return self.resource

    def wait(self, *, progress: bool = True, timeout: float | None = None) -> FitResource:
        """Wait until the fit is final: its record once succeeded; FitFailed otherwise."""
        self.resource = self._client._run(
            self._core.wait(self.id, progress=progress, timeout_s=timeout)
        )
        return self.resource

    def summary(self, *, prob: float | None = None, interval: str | None = None) -> Summary:
        """Every parameter: mean, sd, interval (``prob``, ``interval`` hdi or eti), MCSE."""
        return self._client._run(self._core.summary(self.id, prob, interval))

    def groups(
        self, factor: str, *, prob: float | None = None, interval: str | None = None
    ) -> GroupEffects:
        """Each level of ``factor``: its partially pooled effect, total and shrinkage."""
        return self._client._run(self._core.groups(self.id, factor, prob, interval))

    def diagnostics(self) -> Diagnostics:
        """R-hat, ESS, divergences and a verdict in words."""
        return self._client._run(self._core.diagnostics(self.id))

    def predict(
        self,
        data: Any,
        *,
        kind: Literal["mean", "response"] = "mean",
        prob: float | None = None,
        interval: str | None = None,
        seed: int | None = None,
    ) -> Predictions:
        """Predict the rows of ``data`` (same forms as ``fit``'s), for groups seen or new."""
        plan = self._core.predict(self.id, data, kind=kind, prob=prob, interval=interval, seed=seed)
        return self._client._run(plan)

    def loo(self) -> Loo:
        """PSIS leave-one-out cross-validation (computed on first request)."""
        return self._client._run(self._core.loo(self.id))

    def ppc(
        self,
        *,
        stat: str = "mean",
        by: str | None = None,
        prob: float | None = None,
        interval: str | None = None,
        seed: int | None = None,
    ) -> Ppc:
        """Posterior predictive check of ``stat``, overall and per level of ``by``."""
        plan = self._core.ppc(self.id, stat=stat, by=by, prob=prob, interval=interval, seed=seed)
        return self._client._run(plan)

    def delete(self) -> None:
        """Cancel the fit if it is queued or running (it ends cancelled), else delete it
        and its results."""
        resource = self._client._run(self._core.delete(self.id))
        if resource is not None:
            self.resource = resource
