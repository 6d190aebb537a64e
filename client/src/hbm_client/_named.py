"""Named models: ``client.models`` (``Models``) and ``async_client.models``
(``AsyncModels``). A named model serves one of the key's fits under a stable name as its
current version; promotions and rollbacks are kept as its history. Each method runs one plan
of ``_core``, as the fits' methods do."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from hbm_client._models import ModelPredictions, ModelSummary, NamedModel

if TYPE_CHECKING:
    from hbm_client._async import AsyncClient, AsyncFit
    from hbm_client._client import Client, Fit


def _fit_id(fit: Any) -> str:
    """A fit's id, from a handle (``Fit``, ``AsyncFit``) or the id itself."""
    return fit if isinstance(fit, str) else str(fit.id)


class Models:
    """The key's named models on the service (``client.models``)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._core = client._core

    def promote(
        self, name: str, fit: Fit | str, *, force: bool = False, note: str | None = None
    ) -> NamedModel:
        """Serve ``fit`` (a succeeded fit of yours) as the model's next version, creating
        the model at version 1. A fit whose diagnostics verdict is ``fail`` raises Conflict
        unless ``force`` (recorded in the history). Promoting the current fit again changes
        nothing."""
        return self._client._run(self._core.promote(name, _fit_id(fit), force, note))

    def get(self, name: str) -> NamedModel:
        """The model: current version and fit, every version, the history (NotFound if
        there is none)."""
        return self._client._run(self._core.get_model(name))

    def list(self, offset: int = 0, limit: int = 20) -> list[ModelSummary]:
        """The key's named models, by name."""
        return self._client._run(self._core.list_models(offset, limit))

    def rollback(self, name: str, to_version: int | None = None) -> NamedModel:
        """Serve an earlier version again (default: the current one minus one), recorded as
        a new event; Conflict when there is none."""
        return self._client._run(self._core.rollback(name, to_version))

    def predict(
        self,
        name: str,
        data: Any,
        *,
        kind: Literal["mean", "response"] = "mean",
        prob: float | None = None,
        interval: str | None = None,
        seed: int | None = None,
    ) -> ModelPredictions:
        """Predict the rows of ``data`` with the model's current version; ``.model`` says
        which version and fit answered."""
        plan = self._core.predict_model(
            name, data, kind=kind, prob=prob, interval=interval, seed=seed
        )
        return self._client._run(plan)

    def delete(self, name: str) -> None:
        """Forget the model and its history (its fits stay)."""
        self._client._run(self._core.delete_model(name))


class AsyncModels:
    """The key's named models on the service (``async_client.models``), as ``Models``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._core = client._core

    async def promote(
        self, name: str, fit: AsyncFit | str, *, force: bool = False, note: str | None = None
    ) -> NamedModel:
        """Serve ``fit`` (a succeeded fit of yours) as the model's next version, creating
        the model at version 1. A fit whose diagnostics verdict is ``fail`` raises Conflict
        unless ``force`` (recorded in the history). Promoting the current fit again changes
        nothing."""
        return await self._client._run(self._core.promote(name, _fit_id(fit), force, note))

    async def get(self, name: str) -> NamedModel:
        """The model: current version and fit, every version, the history (NotFound if
        there is none)."""
        return await self._client._run(self._core.get_model(name))

    async def list(self, offset: int = 0, limit: int = 20) -> list[ModelSummary]:
        """The key's named models, by name."""
        return await self._client._run(self._core.list_models(offset, limit))

    async def rollback(self, name: str, to_version: int | None = None) -> NamedModel:
        """Serve an earlier version again (default: the current one minus one), recorded as
        a new event; Conflict when there is none."""
        return await self._client._run(self._core.rollback(name, to_version))

    async def predict(
        self,
        name: str,
        data: Any,
        *,
        kind: Literal["mean", "response"] = "mean",
        prob: float | None = None,
        interval: str | None = None,
        seed: int | None = None,
    ) -> ModelPredictions:
        """Predict the rows of ``data`` with the model's current version; ``.model`` says
        which version and fit answered."""
        plan = self._core.predict_model(
            name, data, kind=kind, prob=prob, interval=interval, seed=seed
        )
        return await self._client._run(plan)

    async def delete(self, name: str) -> None:
        """Forget the model and its history (its fits stay)."""
        await self._client._run(self._core.delete_model(name))
