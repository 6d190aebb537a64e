"""Every operation of the client, written once as a plan (see ``_plans``): the requests it
sends, the answers it reads, how it retries and how it waits for a fit."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from hbm_client._errors import FitFailed, error_for
from hbm_client._events import EventParser
from hbm_client._models import (
    Comparison,
    Diagnostics,
    FitResource,
    GroupEffects,
    Loo,
    ModelPredictions,
    ModelSummary,
    NamedModel,
    Ppc,
    Predictions,
    Summary,
)
from hbm_client._plans import Plan, ReadLine, Send, Sleep, Stream
from hbm_client._progress import ChainBars
from hbm_client._requests import FitOptions, table
from hbm_client._retry import RetryPolicy

__version__ = "0.1.0"

#: Polling a fit: the first wait, growing by half each time up to the last.
POLL_FIRST_S, POLL_MAX_S = 0.25, 2.0


class Deadline:
    """The end of a wait of ``timeout_s`` seconds from now."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s

    def check(self, fit: FitResource, after: float = 0.0) -> None:
        """TimeoutError if the wait would be past its end ``after`` seconds from now."""
        if time.monotonic() + after > self.at:
            raise TimeoutError(f"fit {fit.id} is still {fit.status} after {self.timeout_s:g} s")


class Core:
    """Builds each operation's plan for one service (its URL, key and retry policy)."""

    def __init__(self, base_url: str, api_key: str | None, retry: RetryPolicy) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.headers = {"Accept": "application/json", "User-Agent": f"hbm-client/{__version__}"}
        if api_key is not None:
            self.headers["X-API-Key"] = api_key

    # ----------------------------------------------------------------------- building blocks

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Request:
        """A request to the service; ``params`` that are None are not sent."""
        content = None
        all_headers = self.headers | (headers or {})
        if body is not None:
            content = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
            all_headers["Content-Type"] = "application/json"
        query = {k: v for k, v in (params or {}).items() if v is not None}
        return httpx.Request(
            method, self.base_url + path, params=query, headers=all_headers, content=content
        )

    def send(self, request: httpx.Request, *, idempotent: bool = True) -> Plan[httpx.Response]:
        """Send ``request``, again after a 429/503 or (idempotent) a connection error, as the
        retry policy allows; the last response, whatever its status."""
        attempt = 0
        while True:
            try:
                response = yield Send(request)
            except httpx.TransportError:
                wait = self.retry.wait_after_error(attempt, idempotent)
                if wait is None:
                    raise
            else:
                assert isinstance(response, httpx.Response)
                wait = self.retry.wait_after(
                    attempt, response.status_code, response.headers.get("Retry-After")
                )
                if wait is None:
                    return response
            attempt += 1
            yield Sleep(wait)

    def call[M: BaseModel](self, model: type[M], method: str, path: str, **parts: Any) -> Plan[M]:
        """Send a request, raise the error it answers or parse its answer as ``model``."""
        response = yield from self.send(self.request(method, path, **parts))
        return model.model_validate_json(_success(response).content)

    # ---------------------------------------------------------------------------- fits

    def submit(
        self, data: Any, options: FitOptions, idempotency_key: str | None
    ) -> Plan[FitResource]:
        """``POST /v1/fits`` under an ``Idempotency-Key`` (one per call unless given), so
        that a retry after a lost answer gives the same fit, not a second one."""
        key = idempotency_key or uuid.uuid4().hex
        body = options.body(data)
        return self.call(
            FitResource, "POST", "/v1/fits", body=body, headers={"Idempotency-Key": key}
        )

    def get_fit(self, fit_id: str) -> Plan[FitResource]:
        """``GET /v1/fits/{id}``."""
        return self.call(FitResource, "GET", _fit_path(fit_id))

    def list_fits(self, offset: int, limit: int) -> Plan[list[FitResource]]:
        """``GET /v1/fits``: the key's fits, newest first."""
        params = {"offset": offset, "limit": limit}
        response = yield from self.send(self.request("GET", "/v1/fits", params=params))
        return [FitResource.model_validate(item) for item in _success(response).json()]

    def wait(self, fit_id: str, *, progress: bool, timeout_s: float | None) -> Plan[FitResource]:
        """Follow the fit until it is final (bars per chain if ``progress`` and tqdm is
        installed): its record once succeeded, FitFailed otherwise, TimeoutError past
        ``timeout_s``. It follows the fit's events where the service streams them, and
        polls where it does not (or when the stream breaks)."""
        deadline = None if timeout_s is None else Deadline(timeout_s)
        bars = ChainBars.create() if progress else None
        try:
            fit = yield from self._follow(fit_id, bars, deadline)
            if fit is None:
                fit = yield from self._poll(fit_id, bars, deadline)
        finally:
            if bars is not None:
                bars.close()
        if fit.status != "succeeded":
            raise FitFailed(fit)
        return fit

    def _poll(
        self, fit_id: str, bars: ChainBars | None, deadline: Deadline | None
    ) -> Plan[FitResource]:
        """Read the fit, more and more rarely, until it is final."""
        delay = POLL_FIRST_S
        while True:
            fit = yield from self.get_fit(fit_id)
            if bars is not None:
                bars.show(fit)
            if fit.is_final:
                return fit
            if deadline is not None:
                deadline.check(fit, after=delay)
            yield Sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_S)

    def _follow(
        self, fit_id: str, bars: ChainBars | None, deadline: Deadline | None
    ) -> Plan[FitResource | None]:
        """The fit's final record from ``GET /v1/fits/{id}/events`` (Server-Sent Events,
        each event's data the fit's record; the stream ends after the final one), opened
        again where an old stream closed; None where the service streams none, refuses the
        stream (a 404 of a service without the route, a 429 over the streams per key) or
        it breaks: the caller polls then."""
        last_id: str | None = None
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            request = self.request("GET", f"{_fit_path(fit_id)}/events", headers=headers)
            parser, events = EventParser(), 0
            try:
                head = yield Stream(request)
                assert isinstance(head, httpx.Response)
                kind = head.headers.get("Content-Type", "")
                if head.status_code != 200 or not kind.startswith("text/event-stream"):
                    return None
                while (line := (yield ReadLine())) is not None:
                    assert isinstance(line, str)
                    event = parser.feed(line)
                    if event is None:
                        continue
                    events += 1
                    last_id = event.id
                    fit = FitResource.model_validate_json(event.data)
                    if bars is not None:
                        bars.show(fit)
                    if fit.is_final:
                        return fit
                    if deadline is not None:
                        deadline.check(fit)
            except httpx.TransportError:
                return None
            if events == 0:  # closed at once: not a stream to rely on
                return None

    def delete(self, fit_id: str) -> Plan[FitResource | None]:
        """``DELETE /v1/fits/{id}``: the cancelling fit (202), or None once deleted (204)."""
        response = yield from self.send(self.request("DELETE", _fit_path(fit_id)))
        if _success(response).status_code == 204:
            return None
        return FitResource.model_validate_json(response.content)

    # ------------------------------------------------------------------------- results

    def summary(self, fit_id: str, prob: float | None, interval: str | None) -> Plan[Summary]:
        """``GET /v1/fits/{id}/summary``."""
        params = {"prob": prob, "interval": interval}
        return self.call(Summary, "GET", f"{_fit_path(fit_id)}/summary", params=params)

    def groups(
        self, fit_id: str, factor: str, prob: float | None, interval: str | None
    ) -> Plan[GroupEffects]:
        """``GET /v1/fits/{id}/groups/{factor}``."""
        path = f"{_fit_path(fit_id)}/groups/{_segment(factor)}"
        return self.call(GroupEffects, "GET", path, params={"prob": prob, "interval": interval})

    def diagnostics(self, fit_id: str) -> Plan[Diagnostics]:
        """``GET /v1/fits/{id}/diagnostics``."""
        return self.call(Diagnostics, "GET", f"{_fit_path(fit_id)}/diagnostics")

    def predict(self, fit_id: str, data: Any, **options: Any) -> Plan[Predictions]:
        """``POST /v1/fits/{id}/predictions`` (changes nothing: safe to retry)."""
        body = {"data": table(data)} | {k: v for k, v in options.items() if v is not None}
        return self.call(Predictions, "POST", f"{_fit_path(fit_id)}/predictions", body=body)

    def loo(self, fit_id: str) -> Plan[Loo]:
        """``GET /v1/fits/{id}/loo``."""
        return self.call(Loo, "GET", f"{_fit_path(fit_id)}/loo")

    def ppc(self, fit_id: str, **params: Any) -> Plan[Ppc]:
        """``GET /v1/fits/{id}/ppc``."""
        return self.call(Ppc, "GET", f"{_fit_path(fit_id)}/ppc", params=params)

    def compare(self, fit_ids: Sequence[str]) -> Plan[Comparison]:
        """``POST /v1/comparisons`` (changes nothing: safe to retry)."""
        return self.call(Comparison, "POST", "/v1/comparisons", body={"fit_ids": list(fit_ids)})

    # --------------------------------------------------------------------- named models
    # ``Client.models`` and ``AsyncClient.models`` (``_named``) run these.

    def promote(self, name: str, fit_id: str, force: bool, note: str | None) -> Plan[NamedModel]:
        """``PUT /v1/models/{name}``: the fit as the model's next version (idempotent: the
        current fit again changes nothing, so a retry is safe)."""
        body: dict[str, Any] = {"fit_id": fit_id, "force": force}
        if note is not None:
            body["note"] = note
        return self.call(NamedModel, "PUT", _model_path(name), body=body)

    def get_model(self, name: str) -> Plan[NamedModel]:
        """``GET /v1/models/{name}``."""
        return self.call(NamedModel, "GET", _model_path(name))

    def list_models(self, offset: int, limit: int) -> Plan[list[ModelSummary]]:
        """``GET /v1/models``: the key's models, by name."""
        params = {"offset": offset, "limit": limit}
        response = yield from self.send(self.request("GET", "/v1/models", params=params))
        return [ModelSummary.model_validate(item) for item in _success(response).json()]

    def rollback(self, name: str, to_version: int | None) -> Plan[NamedModel]:
        """``POST /v1/models/{name}/rollback``. Not idempotent (each one moves back a
        version): a connection error is raised, not retried."""
        body = {} if to_version is None else {"to_version": to_version}
        request = self.request("POST", f"{_model_path(name)}/rollback", body=body)
        response = yield from self.send(request, idempotent=False)
        return NamedModel.model_validate_json(_success(response).content)

    def predict_model(self, name: str, data: Any, **options: Any) -> Plan[ModelPredictions]:
        """``POST /v1/models/{name}/predictions`` (changes nothing: safe to retry)."""
        body = {"data": table(data)} | {k: v for k, v in options.items() if v is not None}
        path = f"{_model_path(name)}/predictions"
        return self.call(ModelPredictions, "POST", path, body=body)

    def delete_model(self, name: str) -> Plan[None]:
        """``DELETE /v1/models/{name}`` (its fits stay)."""
        response = yield from self.send(self.request("DELETE", _model_path(name)))
        _success(response)


def _success(response: httpx.Response) -> httpx.Response:
    """``response`` if it succeeded; else the HbmError it answers."""
    if response.is_success:
        return response
    raise error_for(response)


def _fit_path(fit_id: str) -> str:
    return f"/v1/fits/{_segment(fit_id)}"


def _model_path(name: str) -> str:
    return f"/v1/models/{_segment(name)}"


def _segment(value: str) -> str:
    """``value`` as one URL path segment (a factor name may hold any character)."""
    return quote(value, safe="")
