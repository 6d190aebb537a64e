"""The contract between the API and the workers: every call as one pydantic model, and one
reply envelope, encoded and decoded by the code here on both sides.

    call            task           the worker answers with
    --------------  -------------  ------------------------------------------------------
    (a fit id)      hbm.fit        nothing: a fit's state lives in the job store
    PredictCall     hbm.predict    Predictions
    SummaryCall     hbm.summary    Summary at another interval
    GroupsCall      hbm.groups     GroupEffects of one factor at another interval
    DescribeCall    hbm.describe   ModelDescription (the dry run)
    LooCall         hbm.loo        Loo (computed once, then stored beside the results)
    PpcCall         hbm.ppc        Ppc: a posterior predictive check
    CompareCall     hbm.compare    Comparison of fits by their LOO
    FileCall        (its own)      FileWritten: the worker wrote a file beside the fit's
                                   results (a plot, a draws export) under ``file_name()``
    PlotCall        hbm.plot       FileWritten: a picture of the fit (PNG or SVG)
    DrawsCall       hbm.draws      FileWritten: the posterior draws (netCDF, CSV, Parquet)

A ``FileCall``'s file is named by a digest of the call, so both sides know it before it
exists: the API serves it from storage when it is there, and asks a worker to write it
only when it is not (see ``service.api.files``).

A call travels as its JSON (Celery's JSON serializer) and is validated again by the
worker. The worker answers by pushing one reply to ``JobStore.reply_key(token)``: either
``b"ok\\n"`` followed by the response model's JSON, which the API serves as it is (built and
validated once, by the worker), or ``b"error\\n"`` followed by a ``ReplyError``, which the
API turns back into the error the worker met (422 with its fields, 404, 500 for damaged
results, 503 for anything else).
"""

from __future__ import annotations

import hashlib
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.core.errors import (
    DamagedResults,
    FieldError,
    InvalidRequest,
    NotFound,
    ServiceError,
    Unavailable,
)
from service.core.schemas import (
    Columns,
    DrawsFormat,
    DrawsLayout,
    FitSpec,
    IntervalKind,
    PlotFormat,
    PlotKind,
    PpcStatName,
)

FIT_TASK = "hbm.fit"
#: How long a reply waits in Redis for the API to collect it.
REPLY_TTL_S = 300

_OK = b"ok\n"
_ERROR = b"error\n"


class Call(BaseModel):
    """A synchronous call to an interactive worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    task: ClassVar[str]


class FittedCall(Call):
    """A call about a fitted model. ``revision`` (when its record was created) keeps a
    worker's cached model from answering for another fit."""

    fit_id: str
    revision: str


class PredictCall(FittedCall):
    """Predict new rows (already validated against the fit's spec)."""

    task: ClassVar[str] = "hbm.predict"
    n_rows: int = Field(ge=1, description="Rows to predict (a model may use no column).")
    columns: Columns
    kind: Literal["mean", "response"]
    interval: IntervalKind
    prob: float
    seed: int | None = None


class SummaryCall(FittedCall):
    """The summary at another interval than the stored one."""

    task: ClassVar[str] = "hbm.summary"
    interval: IntervalKind
    prob: float


class GroupsCall(FittedCall):
    """One factor's group effects at another interval than the stored one."""

    task: ClassVar[str] = "hbm.groups"
    factor: str
    interval: IntervalKind
    prob: float


class DescribeCall(Call):
    """Build (but do not sample) a model: the dry run."""

    task: ClassVar[str] = "hbm.describe"
    spec: FitSpec


class LooCall(FittedCall):
    """The fit's PSIS-LOO: computed and stored on the first call, read afterwards."""

    task: ClassVar[str] = "hbm.loo"


class PpcCall(FittedCall):
    """A posterior predictive check of one statistic, overall and per level of ``by``."""

    task: ClassVar[str] = "hbm.ppc"
    stat: PpcStatName
    by: str | None = None
    interval: IntervalKind
    prob: float
    seed: int


class FitRef(BaseModel):
    """A succeeded fit named in a call about several."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fit_id: str
    revision: str


class CompareCall(Call):
    """Compare fits of the same data by PSIS-LOO (the API checked they are comparable)."""

    task: ClassVar[str] = "hbm.compare"
    fits: tuple[FitRef, ...] = Field(min_length=2)


class FileCall(FittedCall):
    """A call answered by a file the worker writes beside the fit's results."""

    #: The file name's prefix (``plot``, ``draws``).
    prefix: ClassVar[str]

    def extension(self) -> str:
        """The file's extension (its format)."""
        raise NotImplementedError

    def file_name(self) -> str:
        """The file's name: the same call always names the same file."""
        fields = self.model_dump_json(exclude={"fit_id", "revision"}).encode()
        digest = hashlib.sha256(fields).hexdigest()[:20]
        return f"{self.prefix}-{digest}.{self.extension()}"


class PlotCall(FileCall):
    """A picture of the fit drawn by a worker: ``kind`` as PNG or SVG (the same call, the
    same bytes). ``var``, ``factor`` and ``page`` choose what it shows (empty or None: the
    kind's default); ``prob`` is its intervals' probability."""

    task: ClassVar[str] = "hbm.plot"
    prefix: ClassVar[str] = "plot"
    kind: PlotKind
    format: PlotFormat
    var: tuple[str, ...] = ()
    factor: str | None = None
    prob: float = Field(gt=0, lt=1)
    page: int | None = Field(default=None, ge=1)

    def extension(self) -> str:
        """The file's extension: its format."""
        return self.format


class DrawsCall(FileCall):
    """The posterior draws as a file (see ``worker.outputs.draws``): the variables named in
    ``var`` (empty: every parameter of the summary, and the group effects with ``groups``),
    every ``thin``-th draw, the sampler statistics with ``sample_stats``. ``layout`` is CSV's
    and Parquet's (netCDF keeps each variable's shape)."""

    task: ClassVar[str] = "hbm.draws"
    prefix: ClassVar[str] = "draws"
    format: DrawsFormat
    var: tuple[str, ...] = ()
    thin: int = Field(default=1, ge=1)
    layout: DrawsLayout = "wide"
    groups: bool = False
    sample_stats: bool = False

    def extension(self) -> str:
        """The file's extension: ``nc``, ``csv`` or ``parquet``."""
        return "nc" if self.format == "netcdf" else self.format


class FileWritten(BaseModel):
    """A FileCall's answer: the file now stored, and its size."""

    name: str
    size: int = Field(ge=0)


CALLS: tuple[type[Call], ...] = (
    PredictCall,
    SummaryCall,
    GroupsCall,
    DescribeCall,
    LooCall,
    PpcCall,
    CompareCall,
    PlotCall,
    DrawsCall,
)


class ReplyError(BaseModel):
    """An error a worker met answering a call."""

    status: int
    detail: str
    errors: list[tuple[str, str]] = Field(default_factory=list)


# ------------------------------------------------------------------------ worker side


def encode_answer(answer: BaseModel) -> bytes:
    """A reply with the call's answer."""
    return _OK + answer.model_dump_json().encode()


def encode_error(error: ServiceError) -> bytes:
    """A reply with the error met (what is not a 422, 404 or 500 becomes a 503)."""
    status = error.status if error.status in (404, 422, 500) else 503
    fields = error.errors if isinstance(error, InvalidRequest) else []
    reply = ReplyError(
        status=status, detail=error.detail, errors=[(e.field, e.message) for e in fields]
    )
    return _ERROR + reply.model_dump_json().encode()


# --------------------------------------------------------------------------- API side


def decode_reply(raw: bytes) -> bytes:
    """The answer's JSON, or the error the worker met raised again."""
    if raw.startswith(_OK):
        return raw[len(_OK) :]
    if not raw.startswith(_ERROR):
        raise Unavailable("the worker's answer could not be read; retry shortly")
    error = ReplyError.model_validate_json(raw[len(_ERROR) :])
    if error.status == 422:
        raise InvalidRequest([FieldError(field, message) for field, message in error.errors])
    if error.status == 404:
        raise NotFound(error.detail)
    if error.status == 500:
        raise DamagedResults(error.detail)
    raise Unavailable(error.detail, retry_after=10)
