"""PSIS-LOO: each row's expected log predictive density had the model been fitted without it.

For row i and posterior draws s = 1..S, with log likelihood l_is = log p(y_i | theta_s):

    lpd_i  = log( 1/S sum_s exp(l_is) )                       (in-sample)
    elpd_i = log( sum_s w_is exp(l_is) / sum_s w_is )         (leave-one-out)

where the importance ratios 1/p(y_i | theta_s) are Pareto smoothed into w_is (Vehtari,
Gelman and Gabry 2017; Vehtari et al. 2024). The shape k_i of the Pareto tail fitted to
row i's ratios says whether its estimate is reliable: k <= 0.5 good, <= 0.7 ok, <= 1 bad,
above 1 very bad; ``good_k = min(1 - 1 / log10(S), 0.7)`` is the threshold that depends on
S. The totals are

    elpd_loo = sum_i elpd_i,   se = sqrt(n var(elpd_i)),   p_loo = sum_i (lpd_i - elpd_i),
    looic = -2 elpd_loo.

Every quantity of row i depends on row i's log likelihood alone, so rows are taken in
chunks: memory stays bounded whatever the number of rows, and the numbers are those of
ArviZ's ``loo`` on the whole (chain, draw, row) array. The log likelihood is evaluated
after sampling from the stored draws (the sufficient-statistics likelihood a gaussian model
samples with has no per-row term), by ``log_density``; the relative
efficiency ``r_eff`` is ArviZ's: the mean ESS of the posterior's variables over S.

The LOO-PIT of row i is ``P(y_rep_i <= y_i | y_-i)`` under the same weights: uniform on
[0, 1] across rows when the model's predictive distributions are calibrated (Gabry et al.
2019). It is taken from each draw's predictive CDF (``log_density.cdf_bounds``) rather
than from replicated draws: ``sum_s w_is F_s(y_i)``, and for discrete responses
``L_i + u_i (U_i - L_i)`` with ``L = P(y_rep < y)``, ``U = P(y_rep <= y)`` and ``u_i``
uniform with a fixed seed (ArviZ's randomised tie-breaking). Its distance from uniform is
the Kolmogorov-Smirnov statistic ``D = sup |ECDF(pit) - u|``, beside the 5% critical value
``1.358 / sqrt(n)`` of independent values (LOO-PIT values are nearly independent).
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import arviz_stats  # noqa: F401  (registers the .azstats accessors)
import bambi as bmb
import numpy as np
import pandas as pd
import xarray as xr
from arviz_stats.utils import ELPDDataLOO

from service.core.schemas import InfluentialRow, Loo, LooPit, ParetoKCounts
from worker.modeling.log_density import likelihood_and_cdf
from worker.modeling.prediction import OBS, chunks, fitted_parameters, rows_per_chunk
from worker.modeling.psis import loo_rows

#: Rows with a Pareto k above this are listed (by decreasing k, at most ``MAX_LISTED``).
LISTED_K = 0.7
MAX_LISTED = 1000
#: A chunk holds more rows than a prediction's (4 x 64 MiB of arrays): evaluating the
#: design and the response on a chunk has a fixed cost that dominated chunks of ~100 rows.
CHUNK_SCALE = 4
#: Chunks computed at once.
THREADS = 2
#: The seed of the LOO-PIT's tie-breaking uniforms (ArviZ's default).
PIT_SEED = 214
#: Kolmogorov's 5% critical value of sqrt(n) D.
KS_CRITICAL_5 = 1.358


@dataclass(frozen=True)
class PointwiseLoo:
    """Per-row values of a fit's PSIS-LOO, in the order of the rows it was fitted on."""

    elpd: np.ndarray
    p_loo: np.ndarray
    pareto_k: np.ndarray
    n_samples: int
    pit: np.ndarray | None = None  # the LOO-PIT values; None for families without a CDF

    def to_bytes(self) -> bytes:
        """The values as one ``.npy`` array of shape (4, rows) with ``n_samples`` first
        (the LOO-PIT row NaN where there is none)."""
        buffer = io.BytesIO()
        pit = self.pit if self.pit is not None else np.full(self.elpd.size, np.nan)
        header = np.full((4, 1), float(self.n_samples))
        values = np.stack([self.elpd, self.p_loo, self.pareto_k, pit])
        np.save(buffer, np.hstack([header, values]))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> PointwiseLoo:
        """Values written by ``to_bytes``, or without the LOO-PIT row by earlier versions
        (ValueError if they are not)."""
        array = np.load(io.BytesIO(payload), allow_pickle=False)
        if array.ndim != 2 or array.shape[0] not in (3, 4) or array.shape[1] < 2:
            raise ValueError("not a pointwise LOO array")
        pit = array[3, 1:] if array.shape[0] == 4 and not np.isnan(array[3, 1:]).any() else None
        return cls(array[0, 1:], array[1, 1:], array[2, 1:], int(array[0, 0]), pit)

    def elpd_data(self) -> ELPDDataLOO:
        """ArviZ's container of these values (what ``arviz_stats.compare`` takes)."""
        elpd_i = xr.DataArray(self.elpd, dims=[OBS])
        elpd, se, p, _ = elpd_i.azstats.loo_summary(xr.DataArray(self.p_loo, dims=[OBS]))
        good_k = _good_k(self.n_samples)
        return ELPDDataLOO(
            elpd=float(elpd),
            se=float(se),
            p=float(p),
            n_samples=self.n_samples,
            n_data_points=self.elpd.size,
            scale="log",
            warning=bool((self.pareto_k > good_k).any()),
            good_k=good_k,
            elpd_i=elpd_i,
            pareto_k=xr.DataArray(self.pareto_k, dims=[OBS]),
        )


def relative_efficiency(posterior: xr.Dataset) -> float:
    """ArviZ's ``r_eff``: mean ESS (method "mean") of every posterior value over the
    number of draws; 1 with a single chain."""
    if posterior.sizes["chain"] == 1:
        return 1.0
    ess = posterior.azstats.ess(method="mean")
    values = np.hstack([ess[v].values.ravel() for v in ess.data_vars])
    return float(values.mean() / (posterior.sizes["chain"] * posterior.sizes["draw"]))


def pointwise_loo(
    model: bmb.Model, posterior: xr.Dataset, data: pd.DataFrame, family: str
) -> PointwiseLoo:
    """Each row's elpd, p_loo and Pareto k, rows taken in chunks (``THREADS`` at a time:
    numpy releases the GIL in the heavy steps, and every chunk is independent)."""
    r_eff = relative_efficiency(posterior)
    size = rows_per_chunk(model, posterior) * CHUNK_SCALE

    def chunk_loo(bounds: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
        _, start, stop = bounds
        rows = data.iloc[start:stop].reset_index(drop=True)
        extended = fitted_parameters(model, posterior, rows)
        ll, cdf = likelihood_and_cdf(model, extended, rows, family)
        shape = ll.shape
        rows_ll = _by_row(ll, shape)
        del ll
        expected = () if cdf is None else tuple(_by_row(part, shape) for part in cdf)
        return loo_rows(rows_ll, r_eff, expected)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        parts = list(pool.map(chunk_loo, chunks(len(data), size)))
    columns = [np.concatenate(column) for column in zip(*parts, strict=True)]
    elpd, pareto_k, p_loo = columns[:3]
    pit = None
    if len(columns) == 5:
        lower, upper = columns[3:]
        u = np.random.default_rng(PIT_SEED).uniform(size=lower.size)
        pit = np.clip(lower + u * (upper - lower), 0.0, 1.0)
    n_samples = posterior.sizes["chain"] * posterior.sizes["draw"]
    return PointwiseLoo(elpd, p_loo, pareto_k, n_samples, pit)


def _by_row(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(chain, draw, row) values, broadcast to ``shape``, as (row, chain-major draw)."""
    return np.ascontiguousarray(np.broadcast_to(values, shape).reshape(-1, shape[2]).T)


def loo_pit_uniformity(pit: np.ndarray) -> LooPit:
    """How far the LOO-PIT values are from uniform: the KS distance and its 5% threshold."""
    n = pit.size
    ordered = np.sort(pit)
    steps = np.arange(1, n + 1) / n
    distance = float(max((steps - ordered).max(), (ordered - (steps - 1 / n)).max()))
    threshold = KS_CRITICAL_5 / np.sqrt(n)
    calibrated = distance <= threshold
    return LooPit(
        ks_distance=distance,
        threshold=float(threshold),
        calibrated=calibrated,
        verdict=(
            "the leave-one-out predictive distributions are calibrated: their PIT values "
            "are as uniform as independent uniform values would be"
            if calibrated
            else "the leave-one-out predictive distributions are not calibrated: the PIT "
            f"values are {distance:.3f} from uniform (KS), beyond {threshold:.3f}; look at "
            "the check (/ppc) for where the model misses the data"
        ),
    )


def loo_result(fit_id: str, pointwise: PointwiseLoo, dropped_rows: list[int]) -> Loo:
    """The resource ``GET /loo`` serves. Rows are numbered as the client sent them:
    ``dropped_rows`` (incomplete rows the fit left out) are counted back in."""
    data = pointwise.elpd_data()
    k = pointwise.pareto_k
    counts = ParetoKCounts(
        good=int((k <= 0.5).sum()),
        ok=int(((k > 0.5) & (k <= 0.7)).sum()),
        bad=int(((k > 0.7) & (k <= 1)).sum()),
        very_bad=int((k > 1).sum()),
    )
    listed = np.flatnonzero(k > LISTED_K)
    listed = listed[np.argsort(-k[listed], kind="stable")][:MAX_LISTED]
    sent = _sent_rows(k.size, dropped_rows)
    return Loo(
        fit_id=fit_id,
        n_obs=data.n_data_points,
        n_draws=data.n_samples,
        elpd_loo=data.elpd,
        se=data.se,
        p_loo=data.p,
        looic=-2 * data.elpd,
        looic_se=2 * data.se,
        good_k=data.good_k,
        pareto_k=counts,
        influential_rows=[InfluentialRow(row=int(sent[i]), k=float(k[i])) for i in listed],
        warning=_warning(counts, data.good_k, int((k > data.good_k).sum())),
        loo_pit=None if pointwise.pit is None else loo_pit_uniformity(pointwise.pit),
    )


def _good_k(n_samples: int) -> float:
    return min(1 - 1 / np.log10(n_samples), 0.7) if n_samples > 1 else 0.7


def _sent_rows(n_fitted: int, dropped_rows: list[int]) -> np.ndarray:
    """For each fitted row, its 0-based position among the rows the client sent."""
    kept = np.ones(n_fitted + len(dropped_rows), dtype=bool)
    kept[np.asarray(dropped_rows, dtype=int)] = False
    return np.flatnonzero(kept)


def _warning(counts: ParetoKCounts, good_k: float, above: int) -> str | None:
    if not above:
        return None
    return (
        f"{above} rows have a Pareto k above {good_k:.2f}: their leave-one-out estimates are "
        "unreliable (the fit leans heavily on them); consider a more robust model, or refit "
        "without those rows to check (k-fold cross-validation)"
    )
