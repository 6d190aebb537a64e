"""The asynchronous client: ``AsyncClient`` and the ``AsyncFit`` handle it returns. Each
method runs the same plan of ``_core`` as ``Client``'s, with an ``httpx.AsyncClient``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import httpx

from hbm_client._client import DEFAULT_URL
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
from hbm_client._named import AsyncModels
from hbm_client._plans import Plan, run_async
from hbm_client._requests import FitOptions, Prior, Sampler
from hbm_client._retry import RetryPolicy


class AsyncClient:
    """An asynchronous client of one hbm-service (asyncio), as ``Client``.

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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._core = Core(base_url, api_key, RetryPolicy(max_retries=max_retries))
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport)
        #: The key's named models (promote, get, list, rollback, predict, delete), awaited.
        self.models = AsyncModels(self)

    async def _run[T](self, plan: Plan[T]) -> T:
        return await run_async(plan, self._http)

    async def fit(
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
    ) -> AsyncFit:
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
        fit = AsyncFit(self, await self._run(self._core.submit(data, request, idempotency_key)))
        if wait:
            await fit.wait(progress=progress, timeout=timeout)
        return fit

    async def get_fit(self, fit_id: str) -> AsyncFit:
        """A handle on an existing fit (NotFound if there is none)."""
        return AsyncFit(self, await self._run(self._core.get_fit(fit_id)))

    async def list_fits(self, offset: int = 0, limit: int = 20) -> list[AsyncFit]:
        """The key's fits, newest first."""
        return [AsyncFit(self, r) for r in await self._run(self._core.list_fits(offset, limit))]

    async def compare(self, fits: Sequence[AsyncFit | str]) -> Comparison:
        """Rank 2 to 10 fits of the same data by PSIS-LOO."""
        return await self._run(
            self._core.compare([f if isinstance(f, str) else f.id for f in fits])
        )

    async def close(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncFit:
    """A fit on the service: ``resource`` is its record as last read; each result method
    asks the service (NotReady until the fit has succeeded)."""

    def __init__(self, client: AsyncClient, resource: FitResource) -> None:
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
        return (
            f"AsyncFit(id={self.id!r}, status={self.status!r}, formula={self.resource.formula!r})"
        )

    async def refresh(self) -> FitResource:
        """Read the fit's record again."""
        self.resource = await self._client._run(self._core.get_fit(self.id))
        return self.resource

    async def wait(self, *, progress: bool = True, timeout: float | None = None) -> FitResource:
        """Wait until the fit is final: its record once succeeded; FitFailed otherwise."""
        self.resource = await self._client._run(
            self._core.wait(self.id, progress=progress, timeout_s=timeout)
        )
        return self.resource

    async def summary(self, *, prob: float | None = None, interval: str | None = None) -> Summary:
        """Every parameter: mean, sd, interval (``prob``, ``interval`` hdi or eti), MCSE."""
        return await self._client._run(self._core.summary(self.id, prob, interval))

    async def groups(
        self, factor: str, *, prob: float | None = None, interval: str | None = None
    ) -> GroupEffects:
        """Each level of ``factor``: its partially pooled effect, total and shrinkage."""
        return await self._client._run(self._core.groups(self.id, factor, prob, interval))

    async def diagnostics(self) -> Diagnostics:
        """R-hat, ESS, divergences and a verdict in words."""
        return await self._client._run(self._core.diagnostics(self.id))

    async def predict(
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
        return await self._client._run(plan)

    async def loo(self) -> Loo:
        """PSIS leave-one-out cross-validation (computed on first request)."""
        return await self._client._run(self._core.loo(self.id))

    async def ppc(
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
        return await self._client._run(plan)

    async def delete(self) -> None:
        """Cancel the fit if it is queued or running (it ends cancelled), else delete it
        and its results."""
        resource = await self._client._run(self._core.delete(self.id))
        if resource is not None:
            self.resource = resource
