"""One tqdm bar per chain while a fit samples, fed by the fit's ``progress``."""

from __future__ import annotations

from typing import Any

from hbm_client import _optional
from hbm_client._models import FitResource


class ChainBars:
    """Bars of draws done per chain (warm-up included), with the divergences so far."""

    def __init__(self, tqdm: Any) -> None:
        self._tqdm = tqdm
        self._bars: dict[int, Any] = {}

    @classmethod
    def create(cls) -> ChainBars | None:
        """Bars, or None when tqdm is not installed (after a warning that says so)."""
        tqdm = _optional.tqdm()
        return cls(tqdm) if tqdm is not None else None

    def show(self, fit: FitResource) -> None:
        """Move the bars to the fit's progress; fill them once it has succeeded."""
        if fit.status == "succeeded":
            for bar in self._bars.values():
                bar.n = bar.total
                bar.refresh()
            return
        if fit.progress is None:
            return
        for chain in fit.progress.chains:
            bar = self._bars.get(chain.chain)
            if bar is None:
                bar = self._tqdm(
                    total=chain.draws_total, position=len(self._bars), unit="draw", leave=True
                )
                self._bars[chain.chain] = bar
            bar.set_description(f"chain {chain.chain}{' (warm-up)' if chain.tuning else ''}")
            bar.set_postfix(divergences=chain.divergences, refresh=False)
            bar.n = chain.draws_done
            bar.refresh()

    def close(self) -> None:
        """Close every bar."""
        for bar in self._bars.values():
            bar.close()
