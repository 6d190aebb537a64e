"""What the service answers, as the client reads it: small pydantic models of the fields
the client uses. Fields a newer service adds are kept (``extra="allow"``) and never an
error, and codes that may grow (a fit's status, a failure reason, a verdict) are text.
``to_frame()`` gives a pandas DataFrame (the ``[pandas]`` extra)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hbm_client._optional import frame

#: A fit's statuses after which it changes no more.
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class Answer(BaseModel):
    """Base of the answers: unknown fields are kept, not refused."""

    model_config = ConfigDict(extra="allow")


class Estimate(Answer):
    """Posterior mean, sd and credible interval of one quantity."""

    mean: float
    sd: float
    lower: float
    upper: float


class Interval(Answer):
    """Which interval ``lower`` and ``upper`` bound: ``hdi`` or ``eti``, at ``prob``."""

    kind: str
    prob: float


# ---------------------------------------------------------------------------------- fits


class ChainProgress(Answer):
    """One chain while it samples."""

    chain: int
    draws_done: int
    draws_total: int
    tuning: bool = False
    divergences: int = 0


class Progress(Answer):
    """A running fit's phase and progress."""

    phase: str
    fraction: float
    chains: list[ChainProgress] = Field(default_factory=list)


class FitError(Answer):
    """Why a fit failed: a stable ``reason`` code and a ``message`` in words."""

    reason: str
    message: str


class FitResource(Answer):
    """A fit as ``GET /v1/fits/{id}`` gives it."""

    id: str
    status: str
    name: str | None = None
    formula: str
    family: str
    n_obs: int
    n_dropped: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    progress: Progress | None = None
    sampler: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    error: FitError | None = None
    links: dict[str, str] = Field(default_factory=dict)

    @property
    def is_final(self) -> bool:
        """True once the fit has succeeded, failed or been cancelled."""
        return self.status in FINAL_STATUSES


# ------------------------------------------------------------------------------ results


class ParameterSummary(Estimate):
    """One parameter of the model."""

    name: str
    kind: str
    term: str
    level: str | None = None
    mcse_mean: float
    mcse_sd: float


class Summary(Answer):
    """Every parameter's posterior summary."""

    fit_id: str
    interval: Interval
    parameters: list[ParameterSummary]

    def to_frame(self) -> Any:
        """One row per parameter, indexed by its name."""
        return frame((p.model_dump() for p in self.parameters), index="name")


class NoPooling(Answer):
    """A level's own estimate of a term, from its rows alone."""

    estimate: float
    se: float | None = None


class LevelEffect(Answer):
    """One group term at one level: the deviation (ranef) and the total (coef)."""

    term: str
    ranef: Estimate
    coef: Estimate | None = None
    no_pooling: NoPooling | None = None
    pooling_factor: float | None = None


class GroupLevel(Answer):
    """One level of a grouping factor."""

    level: str
    n_obs: int
    effects: list[LevelEffect]


class GroupEffects(Answer):
    """Each level's partially pooled effects, and the terms' SDs and correlations."""

    fit_id: str
    factor: str
    interval: Interval
    levels: list[GroupLevel]
    terms: list[str] = Field(default_factory=list)
    sd: list[Estimate | None] = Field(default_factory=list)
    corr: list[list[Estimate | None]] = Field(default_factory=list)

    def to_frame(self) -> Any:
        """One row per level and term, indexed by level: ``n_obs``, ``term``, ``ranef_*``
        and ``coef_*`` (mean, sd, lower, upper), ``no_pooling``, ``no_pooling_se`` and
        ``pooling_factor``."""
        return frame(
            (
                {
                    "level": level.level,
                    "term": effect.term,
                    "n_obs": level.n_obs,
                    **_flat("ranef", effect.ranef),
                    **_flat("coef", effect.coef),
                    "no_pooling": own.estimate if own is not None else None,
                    "no_pooling_se": own.se if own is not None else None,
                    "pooling_factor": effect.pooling_factor,
                }
                for level in self.levels
                for effect in level.effects
                for own in [effect.no_pooling]
            ),
            index="level",
        )


class ParameterDiagnostics(Answer):
    """Convergence diagnostics of one parameter."""

    name: str
    r_hat: float
    ess_bulk: float
    ess_tail: float
    mcse_mean: float


class Diagnostics(Answer):
    """Convergence diagnostics and their verdict (``pass``, ``warn``, ``fail``) in words."""

    fit_id: str
    verdict: str
    warnings: list[str]
    chains: int
    draws: int
    divergences: int
    max_treedepth_hits: int
    ebfmi: list[float]
    max_r_hat: float
    min_ess_bulk: float
    min_ess_tail: float
    parameters: list[ParameterDiagnostics]

    def to_frame(self) -> Any:
        """One row per parameter (R-hat, ESS, MCSE), indexed by its name."""
        return frame((p.model_dump() for p in self.parameters), index="name")


class PredictedRow(Estimate):
    """One predicted row, and whether each of its groups was ``seen`` or ``new``."""

    row: int
    groups: dict[str, str] = Field(default_factory=dict)


class Predictions(Answer):
    """One prediction per row sent, in order."""

    fit_id: str
    kind: str
    interval: Interval
    rows: list[PredictedRow]

    def to_frame(self) -> Any:
        """One row per row sent, indexed by ``row``: mean, sd, lower, upper, and per
        grouping factor ``group_<factor>`` = ``seen`` or ``new``."""
        return frame(
            (
                {
                    "row": r.row,
                    "mean": r.mean,
                    "sd": r.sd,
                    "lower": r.lower,
                    "upper": r.upper,
                    **{f"group_{factor}": seen for factor, seen in r.groups.items()},
                }
                for r in self.rows
            ),
            index="row",
        )


class ParetoKCounts(Answer):
    """Rows per band of Pareto k, as R's ``loo`` prints them."""

    good: int
    ok: int
    bad: int
    very_bad: int


class InfluentialRow(Answer):
    """A row whose leave-one-out estimate is unreliable (numbered as sent, from 0)."""

    row: int
    k: float


class Loo(Answer):
    """PSIS leave-one-out cross-validation of a fit."""

    fit_id: str
    n_obs: int
    n_draws: int
    elpd_loo: float
    se: float
    p_loo: float
    looic: float
    looic_se: float
    pareto_k: ParetoKCounts
    influential_rows: list[InfluentialRow] = Field(default_factory=list)
    warning: str | None = None


class ComparedModel(Answer):
    """One fit of a comparison, ranked by ``elpd_loo`` (0 is the best)."""

    fit_id: str
    name: str | None = None
    formula: str
    rank: int
    elpd_loo: float
    se: float
    p_loo: float
    elpd_diff: float
    se_diff: float
    weight: float


class Comparison(Answer):
    """Fits ranked by PSIS-LOO, with a verdict in words."""

    n_obs: int
    models: list[ComparedModel]
    verdict: str

    def to_frame(self) -> Any:
        """One row per fit, best first, indexed by its id."""
        return frame((m.model_dump() for m in self.models), index="fit_id")


class PpcStatistic(Answer):
    """A statistic on the data against its distribution over replicated data."""

    observed: float
    replicated: Estimate
    p_value: float


class PpcGroup(PpcStatistic):
    """The statistic on one level's rows."""

    level: str
    n_obs: int


class Ppc(Answer):
    """A posterior predictive check, overall and per level of ``by``."""

    fit_id: str
    stat: str
    statistic: str
    interval: Interval
    n_obs: int
    n_draws: int
    overall: PpcStatistic
    by: str | None = None
    levels: list[PpcGroup] = Field(default_factory=list)

    def to_frame(self) -> Any:
        """One row per level of ``by``, indexed by level: observed, ``replicated_*``
        (mean, sd, lower, upper) and p_value."""
        return frame(
            (
                {
                    "level": g.level,
                    "n_obs": g.n_obs,
                    "observed": g.observed,
                    **_flat("replicated", g.replicated),
                    "p_value": g.p_value,
                }
                for g in self.levels
            ),
            index="level",
        )


# ---------------------------------------------------------------------------- named models


class ModelVersion(Answer):
    """One version of a named model: the fit it serves and how it was promoted."""

    version: int
    fit_id: str
    formula: str
    family: str
    verdict: str | None = None
    forced: bool = False
    note: str | None = None
    promoted_by: str
    promoted_at: datetime


class ModelEvent(Answer):
    """One change of a named model's current version: ``promote`` or ``rollback``."""

    action: str
    version: int
    fit_id: str
    from_version: int | None = None
    forced: bool = False
    note: str | None = None
    by: str
    at: datetime


class ModelSummary(Answer):
    """A named model as ``GET /v1/models`` lists it."""

    name: str
    version: int
    fit_id: str
    formula: str
    family: str
    created_at: datetime
    updated_at: datetime


class NamedModel(ModelSummary):
    """A named model: its current version and fit, every version, and its history."""

    versions: list[ModelVersion] = Field(default_factory=list)
    history: list[ModelEvent] = Field(default_factory=list)
    links: dict[str, str] = Field(default_factory=dict)

    @property
    def current(self) -> ModelVersion:
        """The version being served."""
        return next(v for v in self.versions if v.version == self.version)


class ModelRef(Answer):
    """Which named model, version and fit answered."""

    name: str
    version: int
    fit_id: str


class ModelPredictions(Predictions):
    """Predictions of a named model, with the version and fit that gave them."""

    model: ModelRef


def _flat(prefix: str, estimate: Estimate | None) -> dict[str, float | None]:
    """An estimate's mean, sd, lower and upper as ``<prefix>_mean``... (None if absent)."""
    return {
        f"{prefix}_{name}": getattr(estimate, name) if estimate is not None else None
        for name in ("mean", "sd", "lower", "upper")
    }
