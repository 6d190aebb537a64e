"""Request and response bodies of the HTTP API, one family per resource.

Static bounds live here; limits that depend on settings (rows, draws, formula length) are
checked in ``service.api.validation`` so that one error names the field and the limit.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Scalar = str | int | float | bool | None
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Records = list[dict[str, Scalar]]
Columns = dict[str, list[Scalar]]

IntervalKind = Literal["hdi", "eti"]
Parameterization = Literal["auto", "noncentered", "centered"]
Adaptation = Literal["diag", "low_rank"]
GroupCorrelations = Literal["estimate", "independent"]
PriorDefaults = Literal["bambi", "rstanarm"]
DEFAULT_PROB = 0.94


class Strict(BaseModel):
    """Base for request bodies: unknown fields are an error, not silently ignored, and values
    keep their JSON types: an integer field takes JSON integers only (not true, 10.0 or "10"),
    a number field integers or decimals (never true or "0.9"), a text field text."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ---------------------------------------------------------------------------------- fits


class SamplerSettings(Strict):
    """How to run MCMC. Omitted values take the service's defaults (4 chains x 1000 draws)."""

    draws: int | None = Field(default=None, ge=1, description="Kept draws per chain.")
    tune: int | None = Field(default=None, ge=0, description="Warm-up draws per chain.")
    chains: int | None = Field(default=None, ge=1)
    seed: int | None = Field(
        default=None, ge=0, lt=2**32, description="Fix it for a reproducible fit."
    )
    target_accept: float | None = Field(
        default=None,
        gt=0.5,
        lt=1.0,
        description="NUTS's target acceptance rate (Stan's adapt_delta). Default: 0.95 as "
        "rstanarm samples every model, except 0.8 for gaussian models (collapsed to "
        "sufficient statistics, they sample cleanly at the larger step).",
    )
    refit_divergent: bool = Field(
        default=True,
        description="When more than 1% of draws diverge, sample once more at a higher "
        "target_accept (1 - (1 - target_accept) / 4, at most 0.99); /diagnostics reports both "
        "runs.",
    )
    method: Literal["nutpie"] = "nutpie"
    time_limit_s: int | None = Field(
        default=None, ge=1, description="Fail the fit with reason 'timeout' past this time."
    )
    parameterization: Parameterization = Field(
        default="auto",
        description="Group-level effects as offsets times SD (noncentered, Bambi's default) "
        "or centered on the intercept; same posterior. auto: centered for gaussian "
        "varying-intercept models whose groups the data identify well, else noncentered.",
    )
    adaptation: Adaptation = Field(
        default="diag",
        description="nutpie's mass matrix: diagonal, or low_rank for correlated posteriors.",
    )


class ResolvedSampler(BaseModel):
    """The sampler settings a fit actually used (defaults filled in, seed drawn if absent)."""

    draws: int
    tune: int
    chains: int
    seed: int
    target_accept: float
    method: str
    refit_divergent: bool = False
    time_limit_s: int = 3600
    parameterization: Parameterization = "auto"
    adaptation: Adaptation = "diag"


class PriorSpec(Strict):
    """A prior in Bambi's vocabulary: a distribution name and its parameters.

    A parameter may itself be a prior (a hyperprior), as the SD of a group-level term
    must be: ``{"dist": "Normal", "params": {"mu": 0, "sigma": {"dist": "HalfNormal",
    "params": {"sigma": 1}}}}``.
    """

    dist: str = Field(examples=["Normal", "HalfNormal", "StudentT"])
    params: dict[str, FiniteFloat | PriorSpec] = Field(default_factory=dict)


class ModelRequest(Strict):
    """A model: data, a Bambi formula, a family and optional priors."""

    data: Records | Columns = Field(
        description="Rows as a list of objects, or columns as an object of equal-length arrays."
    )
    formula: str = Field(examples=["score ~ (1 | school)"])
    family: str = Field(default="gaussian", description="Response distribution.")
    link: str | None = Field(default=None, description="Link of the main parameter.")
    priors: dict[str, PriorSpec] = Field(
        default_factory=dict,
        description="Priors by term name (Intercept, x, 1|g, sigma...); others keep "
        "Bambi's defaults.",
    )
    distributional: dict[str, str] = Field(
        default_factory=dict,
        description='Formulas for auxiliary parameters, by name: {"sigma": "0 + offset(ls)"}.',
    )
    categorical: dict[str, list[Scalar] | None] = Field(
        default_factory=dict,
        description="Columns to treat as categorical; a list gives the order of the levels.",
    )
    na_action: Literal["error", "drop"] = Field(
        default="error",
        description="error: missing values in used columns are a 422; drop: drop those rows.",
    )
    group_correlations: GroupCorrelations = Field(
        default="estimate",
        description="estimate (the default): the terms of one parenthesised group term, as "
        "'(1 + x | g)', are one multivariate normal per level whose correlations are "
        "estimated (LKJ prior, eta 1 unless priors sets '1|g:x|g_corr'), as lme4, rstanarm "
        "and brms do: assuming independence understates the uncertainty of the slopes when "
        "intercepts and slopes correlate. independent: Bambi's model, each term on its own. "
        "Separate terms '(1 | g) + (0 + x | g)' are independent either way.",
    )
    prior_defaults: PriorDefaults = Field(
        default="bambi",
        description="Where the priors a request does not set come from. bambi: Bambi's "
        "weakly informative defaults. rstanarm: stan_glmer's defaults, for the same "
        "posterior as rstanarm on the same data: coefficients normal(0, 2.5 sd(y) / sd(x)) "
        "(sd(y) for gaussian only), the intercept of centred predictors normal(mean(y), "
        "2.5 sd(y)) (gaussian) or normal(0, 2.5), sigma exponential(1 / sd(y)), other "
        "families' dispersion exponential(1), and group SDs by decov(1, 1, 1, 1) (scaled "
        "by sigma for gaussian). Families: gaussian, bernoulli, binomial, poisson, "
        "negativebinomial, gamma; no distributional formulas.",
    )


class FitRequest(ModelRequest):
    """A model to fit, with sampler settings."""

    sampler: SamplerSettings = Field(default_factory=SamplerSettings)
    name: str | None = Field(default=None, max_length=200)
    notify_url: str | None = Field(
        default=None,
        max_length=2048,
        description="POST the fit here when it ends (succeeded, failed, cancelled), signed "
        "with your key's secret (GET /v1/webhooks/secret): an http(s) URL whose host the "
        "service allows.",
        examples=["https://example.org/hooks/fits"],
    )


class FitSpec(BaseModel):
    """The validated, normalised request as the worker receives it (stored as an artifact)."""

    formula: str
    family: str
    link: str
    priors: dict[str, PriorSpec] = Field(default_factory=dict)
    distributional: dict[str, str] = Field(default_factory=dict)
    categorical: dict[str, list[Scalar] | None] = Field(default_factory=dict)
    columns: dict[str, list[Scalar]]
    n_dropped: int = 0
    dropped_rows: list[int] = Field(
        default_factory=list, description="0-based positions of the incomplete rows dropped."
    )
    sampler: ResolvedSampler
    name: str | None = None
    group_correlations: GroupCorrelations = Field(
        default="independent",
        description="As requested; a spec stored before the option existed was fitted "
        "independent, hence this default.",
    )
    prior_defaults: PriorDefaults = "bambi"


class FitStatus(StrEnum):
    """Life cycle of a fit: queued -> running -> succeeded | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True when the fit will not change status any more."""
        return self in (FitStatus.SUCCEEDED, FitStatus.FAILED, FitStatus.CANCELLED)


class ChainProgress(BaseModel):
    """Progress of one chain while sampling."""

    chain: int
    draws_done: int = Field(description="Draws finished, warm-up included.")
    draws_total: int
    tuning: bool
    divergences: int


class Progress(BaseModel):
    """Progress of a running fit."""

    phase: Literal["compiling", "sampling", "summarizing"]
    fraction: float = Field(ge=0, le=1)
    chains: list[ChainProgress] = Field(default_factory=list)


class Timings(BaseModel):
    """Seconds spent in each phase of a fit."""

    queued_s: float | None = None
    build_s: float | None = None
    compile_s: float | None = None
    compiled: bool | None = Field(
        default=None,
        description="Whether this fit compiled its model; false when a compiled model of "
        "the same structure was reused with this fit's data and priors.",
    )
    sampling_s: float | None = None
    summarize_s: float | None = None
    total_s: float | None = None


class FailureReason(StrEnum):
    """Why a fit failed (``error.reason``): a stable code; ``error.message`` says more."""

    MODEL_ERROR = "model_error"  # the model cannot be built from this formula and data
    COMPILE_ERROR = "compile_error"  # the model could not be compiled
    SAMPLING_ERROR = "sampling_error"  # the sampler could not explore the posterior
    TIMEOUT = "timeout"  # past sampler.time_limit_s
    OUT_OF_MEMORY = "out_of_memory"  # past HBM_MAX_FIT_RSS_MB
    WORKER_LOST = "worker_lost"  # its worker died HBM_MAX_ATTEMPTS times
    INVALID_REQUEST = "invalid_request"  # the worker's own checks refused the request
    STORAGE_ERROR = "storage_error"  # its files could not be written or read
    INTERNAL_ERROR = "internal_error"  # a defect of the service; logged

    @property
    def infrastructure(self) -> bool:
        """A fault of the service's infrastructure, not of the request: such a failure is
        not the answer to the request, and the same request may fit again."""
        return self in (FailureReason.STORAGE_ERROR, FailureReason.INTERNAL_ERROR)


class FitError(BaseModel):
    """Why a fit failed, as data."""

    reason: FailureReason
    message: str


class NotificationStatus(StrEnum):
    """Where a fit's notification (its ``notify_url``) stands."""

    PENDING = "pending"  # the fit has not ended, or the next attempt is due
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # every attempt failed, or the receiver answered a final 4xx or 3xx
    REFUSED = "refused"  # its host or an address it resolved to is not allowed: never sent


class Notification(BaseModel):
    """The delivery of a fit's notification: one POST when the fit ends, retried."""

    url: str
    status: NotificationStatus = NotificationStatus.PENDING
    attempts: int = 0
    last_status_code: int | None = Field(default=None, description="The receiver's last answer.")
    last_error: str | None = Field(default=None, description="Why the last attempt failed.")
    delivered_at: datetime | None = None
    next_attempt_at: datetime | None = None


class FitResource(BaseModel):
    """A fit: its request, status, progress, timings and, once failed, its error."""

    id: str
    status: FitStatus
    name: str | None = None
    formula: str
    family: str
    n_obs: int
    n_dropped: int = Field(default=0, description="Incomplete rows dropped (na_action drop).")
    sampler: ResolvedSampler
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    progress: Progress | None = None
    timings: Timings = Field(default_factory=Timings)
    versions: dict[str, str] = Field(default_factory=dict)
    error: FitError | None = None
    request_id: str | None = Field(
        default=None,
        description="The X-Request-ID of the request that created the fit: the service's "
        "log lines about the fit carry it.",
    )
    notification: Notification | None = Field(
        default=None, description="The delivery of its notify_url, when the request had one."
    )
    links: dict[str, str] = Field(default_factory=dict)

    def with_links(self) -> FitResource:
        """The record with the links of its resources (what GET /v1/fits/{id} answers)."""
        base = f"/v1/fits/{self.id}"
        self.links = {"self": base, "report": f"{base}/report", "events": f"{base}/events"}
        if self.status is FitStatus.SUCCEEDED:
            names = ("summary", "diagnostics", "predictions", "priors", "loo", "ppc", "draws")
            self.links |= {name: f"{base}/{name}" for name in names}
            self.links["plots"] = f"{base}/plots/{{kind}}"  # a URI template: kind is PlotKind
        return self


class WebhookSecret(BaseModel):
    """How your notifications are signed, and the secret to check them with."""

    secret: str = Field(description="Your key's signing secret (HMAC-SHA256 key).")
    signature_header: str = "X-Signature"
    timestamp_header: str = "X-Hbm-Timestamp"
    signed: str = Field(description="What is signed: sha256=hex(HMAC-SHA256(secret, this)).")
    tolerance_s: int = Field(description="Refuse notifications whose timestamp is older.")


# ------------------------------------------------------------------------------ results


class Interval(BaseModel):
    """Which credible interval the bounds are: highest density (hdi) or equal-tailed (eti)."""

    kind: IntervalKind
    prob: float


class Estimate(BaseModel):
    """Posterior mean, sd and credible interval of one quantity."""

    mean: float
    sd: float
    lower: float
    upper: float


class ParameterSummary(Estimate):
    """One model parameter."""

    name: str = Field(examples=["Intercept", "1|school_sigma", "sigma"])
    kind: Literal["fixed", "group_sd", "group_corr", "auxiliary"]
    term: str = Field(description="Bambi term the parameter belongs to.")
    level: str | None = Field(default=None, description="Level, for a categorical term.")
    mcse_mean: float
    mcse_sd: float


class Summary(BaseModel):
    """Posterior summary of every parameter of a fit."""

    fit_id: str
    interval: Interval
    parameters: list[ParameterSummary]


class NoPooling(BaseModel):
    """A level's own estimate of a term, from its rows alone (no pooling)."""

    estimate: float = Field(
        description="The level's own least-squares coefficient (its mean for an intercept-"
        "only term), on the scale of coef; for an intercept-only logit model, the logit of "
        "its proportion of successes."
    )
    se: float | None = Field(
        description="Its standard error: posterior mean of sigma times sqrt of the diagonal "
        "of (Z_j'Z_j)^-1 (sqrt(1/k + 1/(n-k)) for the logit)."
    )


class LevelEffect(BaseModel):
    """One group-level term at one level: the deviation (ranef) and the total (coef)."""

    term: str = Field(examples=["1|school"])
    ranef: Estimate
    coef: Estimate | None = Field(
        description="Fixed part + ranef; null for a categorical group expression."
    )
    no_pooling: NoPooling | None = Field(
        default=None,
        description="The level's own estimate; null where undefined (too few rows, a "
        "rank-deficient design, or a model without a no-pooling counterpart).",
    )
    pooling_factor: float | None = Field(
        default=None,
        description="0 = the level's own estimate, 1 = the population's; posterior mean of "
        "se^2/(se^2+sd^2).",
    )


class GroupLevel(BaseModel):
    """One level of a grouping factor."""

    level: str
    n_obs: int
    effects: list[LevelEffect]


class GroupEffects(BaseModel):
    """The partially pooled effect of every level of one grouping factor, and the
    population they come from (lme4's ``VarCorr``): each term's SD and their correlations."""

    fit_id: str
    factor: str
    interval: Interval
    levels: list[GroupLevel]
    terms: list[str] = Field(
        default_factory=list, description="The factor's group terms: the order of sd and corr."
    )
    sd: list[Estimate | None] = Field(
        default_factory=list,
        description="Each term's SD across levels; null for a term with no single SD.",
    )
    corr: list[list[Estimate | None]] = Field(
        default_factory=list,
        description="Correlations of the terms; null where the model does not estimate one "
        "(terms in separate parentheses are independent), 1 on the diagonal.",
    )


class ParameterDiagnostics(BaseModel):
    """Convergence diagnostics of one parameter (one entry per level of a vector)."""

    name: str
    r_hat: float
    ess_bulk: float
    ess_tail: float
    mcse_mean: float


class Verdict(StrEnum):
    """Overall convergence verdict."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


class SamplerRun(BaseModel):
    """One sampling run of a fit."""

    target_accept: float
    divergences: int
    draws: int = Field(description="Draws of all chains.")
    sampling_s: float


class Diagnostics(BaseModel):
    """Convergence diagnostics with a verdict (Vehtari et al. 2021 thresholds)."""

    fit_id: str
    verdict: Verdict
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
    parameterization: str | None = Field(
        default=None, description="How group effects were sampled: centered or noncentered."
    )
    parameterization_reason: str | None = Field(
        default=None, examples=["auto: every group well identified by its data"]
    )
    likelihood: str | None = Field(
        default=None,
        description="How the sampler evaluated the likelihood: sufficient_statistics (gaussian "
        "models: sums per group level, the same posterior at a cost independent of the rows) "
        "or row_wise.",
    )
    left_independent: dict[str, str] = Field(
        default_factory=dict,
        description="Group terms the formula asks to estimate jointly ('(1 + C(a) | g)') that "
        "were estimated independently, by block name, with the reason.",
    )
    runs: list[SamplerRun] = Field(
        default_factory=list,
        description="Each sampling run, in order: two when the first diverged in more than 1% "
        "of its draws and was sampled again at a higher target_accept (the results are the "
        "last run's).",
    )


# -------------------------------------------------------------------------- predictions


class PredictionRequest(Strict):
    """New rows to predict, from a fitted model."""

    data: Records | Columns
    kind: Literal["mean", "response"] = Field(
        default="mean",
        description="mean: expected value of the response; response: posterior predictive.",
    )
    interval: IntervalKind = "hdi"
    prob: float = Field(default=DEFAULT_PROB, gt=0, lt=1)
    seed: int | None = Field(default=None, ge=0, lt=2**32)


class PredictedRow(Estimate):
    """Prediction for one row, and whether each of its groups was seen in training."""

    row: int
    groups: dict[str, Literal["seen", "new"]]


class Predictions(BaseModel):
    """Predictions with uncertainty, one per requested row."""

    fit_id: str
    kind: Literal["mean", "response"]
    interval: Interval
    rows: list[PredictedRow]


class PriorUsed(BaseModel):
    """A prior a model uses, default or requested; hyperpriors nest inside ``params``."""

    term: str
    kind: Literal["common", "group", "auxiliary"]
    dist: str
    params: dict[str, Any]


class Priors(BaseModel):
    """Every prior a fit used (as brms' prior_summary)."""

    fit_id: str
    priors: list[PriorUsed]


class GroupInfo(BaseModel):
    """A grouping factor: how many levels, which terms vary by it."""

    factor: str
    levels: int
    terms: list[str]


class GroupFactors(BaseModel):
    """The grouping factors of a fit."""

    fit_id: str
    factors: list[GroupInfo]


class ModelDescription(BaseModel):
    """A dry run: what would be fitted, without sampling."""

    formula: str
    family: str
    n_obs: int
    n_dropped: int
    n_parameters: int = Field(description="Free scalar parameters the sampler would explore.")
    groups: list[GroupInfo]
    priors: list[PriorUsed]


class Health(BaseModel):
    """Liveness answer."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness answer: every dependency the service needs answers."""

    status: Literal["ready"] = "ready"
    checks: dict[str, str] = Field(
        description="Each dependency and what was found: redis, storage, fit and "
        "interactive workers (how many are alive)."
    )


class ParetoKCounts(BaseModel):
    """How many rows fall in each band of the Pareto k diagnostic (as R's ``loo`` prints)."""

    good: int = Field(description="k <= 0.5")
    ok: int = Field(description="0.5 < k <= 0.7")
    bad: int = Field(description="0.7 < k <= 1")
    very_bad: int = Field(description="k > 1")


class InfluentialRow(BaseModel):
    """A row whose leave-one-out estimate is unreliable."""

    row: int = Field(description="0-based position among the rows sent with the fit request.")
    k: float = Field(description="Pareto k of the row's importance ratios.")


class LooPit(BaseModel):
    """How uniform the LOO-PIT values are: calibrated predictive distributions give
    uniform ones (Gabry et al. 2019)."""

    ks_distance: float = Field(description="Kolmogorov-Smirnov distance from uniform.")
    threshold: float = Field(description="Its 5% critical value, 1.358 / sqrt(n).")
    calibrated: bool = Field(description="ks_distance <= threshold.")
    verdict: str


class Loo(BaseModel):
    """PSIS leave-one-out cross-validation of a fit (as ArviZ's and R's ``loo``)."""

    fit_id: str
    n_obs: int
    n_draws: int
    elpd_loo: float = Field(description="Expected log pointwise predictive density.")
    se: float = Field(description="Standard error of elpd_loo.")
    p_loo: float = Field(description="Effective number of parameters.")
    looic: float = Field(description="-2 elpd_loo.")
    looic_se: float
    good_k: float = Field(description="min(1 - 1/log10(draws), 0.7): above it, unreliable.")
    pareto_k: ParetoKCounts
    influential_rows: list[InfluentialRow] = Field(
        description="Rows with k > 0.7, highest k first (at most 1,000)."
    )
    warning: str | None = Field(description="Why the estimate may be unreliable, if it may.")
    loo_pit: LooPit | None = Field(
        default=None,
        description="Uniformity of the LOO-PIT values; null for the ordinal family (and LOO "
        "computed before this existed).",
    )


class ComparisonRequest(Strict):
    """Fits of the same data and response to compare by PSIS-LOO."""

    fit_ids: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        min_length=2, max_length=10, description="Distinct fit ids (2 to 10)."
    )


class ComparedModel(BaseModel):
    """One fit in a comparison, ranked by elpd_loo (0 is the best)."""

    fit_id: str
    name: str | None
    formula: str
    rank: int
    elpd_loo: float
    se: float
    p_loo: float
    elpd_diff: float = Field(description="elpd_loo minus the best model's (0 for the best).")
    se_diff: float = Field(description="Standard error of elpd_diff (paired, row by row).")
    weight: float = Field(description="Stacking weight of the model's predictive distribution.")
    pareto_k_above_good: int = Field(description="Rows whose LOO estimate is unreliable.")


class Comparison(BaseModel):
    """Models ranked by their leave-one-out predictive accuracy (ArviZ's ``compare``)."""

    n_obs: int
    models: list[ComparedModel]
    verdict: str = Field(description="In words: which differences exceed twice their SE.")


# ----------------------------------------------------------- posterior predictive checks

#: Test statistics a posterior predictive check computes over rows (the route's ``stat``).
PpcStatName = Literal["mean", "sd", "min", "max", "median", "q05", "q95"]
#: The pictures of a fit ``GET /v1/fits/{id}/plots/{kind}`` draws.
PlotKind = Literal["trace", "forest", "caterpillar", "shrinkage", "ppc", "loo_pit", "pareto_k"]
PlotFormat = Literal["png", "svg"]
#: The files ``GET /v1/fits/{id}/draws`` exports, and how CSV and Parquet lay them out.
DrawsFormat = Literal["netcdf", "csv", "parquet"]
DrawsLayout = Literal["long", "wide"]


class PpcStatistic(BaseModel):
    """A statistic T of the response: its value on the data, and its distribution over
    responses replicated from the posterior predictive distribution."""

    observed: float = Field(description="T(y) on the rows the model was fitted on.")
    replicated: Estimate = Field(
        description="Mean, sd and credible interval of T(y_rep) over the posterior draws."
    )
    p_value: float = Field(
        ge=0,
        le=1,
        description="Posterior predictive p-value P(T(y_rep) >= T(y)), ties counted half: "
        "near 0 or 1, the model does not reproduce T; near 0.5, it does.",
    )


class PpcGroup(PpcStatistic):
    """The statistic on the rows of one level of the ``by`` factor."""

    level: str
    n_obs: int


class PpcCategory(PpcStatistic):
    """The proportion of rows in one category of an ordinal response."""

    category: str


class Ppc(BaseModel):
    """A posterior predictive check of a fit, overall and per level of a factor.

    For bernoulli and binomial responses the only statistic is the proportion of successes
    (``stat`` mean; binomial: successes / trials, summed over the rows); for cumulative
    (ordinal) responses, statistics are of the 0-based category positions and
    ``categories`` compares the proportion of each category.
    """

    fit_id: str
    stat: PpcStatName
    statistic: str = Field(description="What T is, in words.", examples=["mean of the response"])
    interval: Interval
    n_obs: int
    n_draws: int = Field(description="Posterior draws, each giving one replicated data set.")
    overall: PpcStatistic
    by: str | None = Field(default=None, description="The factor or column of ``levels``.")
    n_levels: int | None = Field(
        default=None, description="Levels of ``by`` in the data (``levels`` lists at most 1,000)."
    )
    levels: list[PpcGroup] = Field(
        default_factory=list,
        description="Per level, in the factor's order: all levels up to 1,000, else the "
        "1,000 with the most rows; a level where T is undefined (the sd of one row, a "
        "proportion of zero trials) is left out.",
    )
    categories: list[PpcCategory] | None = Field(
        default=None, description="Ordinal responses: the proportion of rows in each category."
    )


# ------------------------------------------------------------------------- named models


class PromoteRequest(Strict):
    """Make a fit the next version of a named model (``PUT /v1/models/{name}``)."""

    fit_id: str = Field(max_length=64, description="One of your succeeded fits.")
    force: bool = Field(
        default=False,
        description="Promote a fit whose diagnostics verdict is fail (recorded in the history).",
    )
    note: str | None = Field(default=None, max_length=500, description="Why, in words.")


class RollbackRequest(Strict):
    """Make an earlier version current again (``POST /v1/models/{name}/rollback``)."""

    to_version: int | None = Field(
        default=None, ge=1, description="The version to serve (default: current - 1)."
    )


class NamedModelVersion(BaseModel):
    """One version of a named model: the fit it serves, and its promotion."""

    version: int
    fit_id: str
    formula: str
    family: str
    verdict: str | None = Field(description="The fit's diagnostics verdict when promoted.")
    forced: bool = Field(description="Promoted despite a fail verdict (force: true).")
    note: str | None = None
    promoted_by: str = Field(description="The promoting key's digest prefix, or anonymous.")
    promoted_at: datetime


class NamedModelEvent(BaseModel):
    """One change of a named model's current version, in the order they happened."""

    action: Literal["promote", "rollback"]
    version: int = Field(description="The version current after the change.")
    fit_id: str
    from_version: int | None = Field(description="The version current before (None: none).")
    forced: bool = False
    note: str | None = None
    by: str = Field(description="The key's digest prefix, or anonymous.")
    at: datetime


class NamedModelSummary(BaseModel):
    """A named model as ``GET /v1/models`` lists it."""

    name: str
    version: int = Field(description="The current version.")
    fit_id: str = Field(description="The fit the current version serves.")
    formula: str
    family: str
    created_at: datetime
    updated_at: datetime


class NamedModel(NamedModelSummary):
    """A named model: its current version, every version, and the history of changes."""

    versions: list[NamedModelVersion] = Field(description="Every version, oldest first.")
    history: list[NamedModelEvent] = Field(description="Promotions and rollbacks, in order.")
    links: dict[str, str] = Field(default_factory=dict)


class ModelRef(BaseModel):
    """Which named model, version and fit answered a request."""

    name: str
    version: int
    fit_id: str


class ModelPredictions(Predictions):
    """Predictions of a named model's current version (resolved once, at the request's
    start), saying which version and fit answered."""

    model: ModelRef
