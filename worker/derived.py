"""Results derived from a succeeded fit on first request, then stored beside its results:
its PSIS-LOO (``loo-pointwise.npy``, then ``loo.json``), and comparisons of fits by it.

A stored file that cannot be read back is computed again (it is derived from the draws,
which stay the reference). A fit deleted while its LOO was computed gets no file: the
write finds no folder and the call answers 404.
"""

from __future__ import annotations

import logging

from arviz_stats.loo.compare import compare as arviz_compare
from pydantic import ValidationError

from service.core.artifacts import LOO_FILE, LOO_POINTWISE_FILE, Artifacts
from service.core.errors import NotFound
from service.core.schemas import ComparedModel, Comparison, Loo
from worker.modeling.building import frame
from worker.modeling.cache import FittedModel
from worker.modeling.loo import PointwiseLoo, loo_result, pointwise_loo

log = logging.getLogger(__name__)

#: |elpd_diff| below this many SEs (of the difference) is not called a difference.
SE_MULTIPLE = 2


def stored_loo(artifacts: Artifacts, fit_id: str, fitted: FittedModel) -> Loo:
    """The fit's LOO resource: read if stored, else computed and stored."""
    try:
        return Loo.model_validate_json(artifacts.read_bytes(fit_id, LOO_FILE))
    except FileNotFoundError:
        pass
    except ValidationError:
        log.warning("fit %s: stored LOO unreadable; computing it again", fit_id)
    result = loo_result(fit_id, pointwise(artifacts, fit_id, fitted), fitted.spec.dropped_rows)
    _write(artifacts, fit_id, LOO_FILE, result.model_dump_json().encode())
    return result


def pointwise(artifacts: Artifacts, fit_id: str, fitted: FittedModel) -> PointwiseLoo:
    """The fit's per-row LOO values: read if stored, else computed and stored."""
    try:
        return PointwiseLoo.from_bytes(artifacts.read_bytes(fit_id, LOO_POINTWISE_FILE))
    except FileNotFoundError:
        pass
    except ValueError:
        log.warning("fit %s: stored pointwise LOO unreadable; computing it again", fit_id)
    spec = fitted.spec
    values = pointwise_loo(fitted.model, fitted.posterior, frame(spec.columns, spec), spec.family)
    _write(artifacts, fit_id, LOO_POINTWISE_FILE, values.to_bytes())
    return values


def compare(fits: dict[str, tuple[FittedModel, PointwiseLoo]]) -> Comparison:
    """ArviZ's ``compare`` (stacking weights) of fits of the same rows, with a verdict."""
    elpd = {fit_id: values.elpd_data() for fit_id, (_, values) in fits.items()}
    table = arviz_compare(elpd, round_to="none")  # type: ignore[no-untyped-call]
    models = []
    for fit_id, row in table.iterrows():
        fitted, values = fits[str(fit_id)]
        data = elpd[str(fit_id)]
        models.append(
            ComparedModel(
                fit_id=str(fit_id),
                name=fitted.spec.name,
                formula=fitted.spec.formula,
                rank=int(row["rank"]),
                elpd_loo=float(row["elpd"]),
                se=float(row["se"]),
                p_loo=float(row["p"]),
                elpd_diff=float(row["elpd_diff"]),
                se_diff=float(row["dse"]),
                weight=float(row["weight"]),
                pareto_k_above_good=int((values.pareto_k > data.good_k).sum()),
            )
        )
    n_obs = next(iter(fits.values()))[1].elpd.size
    return Comparison(n_obs=n_obs, models=models, verdict=verdict(models))


def verdict(models: list[ComparedModel]) -> str:
    """In words: which models predict worse than the best by more than twice the SE."""
    best, others = models[0], models[1:]
    worse = [m for m in others if -m.elpd_diff > SE_MULTIPLE * m.se_diff]
    alike = [m for m in others if m not in worse]
    sentences = []
    if alike:
        names = ", ".join(_label(m) for m in alike)
        sentences.append(
            f"{_label(best)} and {names} are not distinguishable: "
            f"each difference in elpd_loo is within {SE_MULTIPLE} standard errors"
        )
    for m in worse:
        sentences.append(
            f"{_label(m)} predicts worse than {_label(best)} by {-m.elpd_diff:.1f} "
            f"(SE {m.se_diff:.1f}), more than {SE_MULTIPLE} standard errors"
        )
    if not alike:
        sentences.insert(0, f"{_label(best)} predicts best")
    return "; ".join(sentences) + "."


def _label(model: ComparedModel) -> str:
    return f"'{model.name}'" if model.name else f"'{model.formula}'"


def _write(artifacts: Artifacts, fit_id: str, name: str, payload: bytes) -> None:
    try:
        artifacts.write_derived(fit_id, name, payload)
    except FileNotFoundError as exc:
        raise NotFound("the fit was deleted") from exc
