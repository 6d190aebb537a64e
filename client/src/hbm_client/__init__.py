"""Python client of hbm-service: fit hierarchical Bayesian models over HTTP and read their
results as typed models or pandas DataFrames.

>>> from hbm_client import Client
>>> with Client("http://127.0.0.1:8000") as hbm:  # doctest: +SKIP
...     fit = hbm.fit(students, "score ~ (1 | school)", sampler={"seed": 2024})
...     fit.summary().to_frame()
"""

from hbm_client._async import AsyncClient, AsyncFit
from hbm_client._client import Client, Fit
from hbm_client._core import __version__
from hbm_client._errors import (
    Conflict,
    FieldError,
    FitFailed,
    HbmError,
    InvalidRequest,
    NotFound,
    NotReady,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from hbm_client._models import (
    Comparison,
    Diagnostics,
    FitResource,
    GroupEffects,
    Loo,
    ModelEvent,
    ModelPredictions,
    ModelRef,
    ModelSummary,
    ModelVersion,
    NamedModel,
    ParameterSummary,
    Ppc,
    Predictions,
    Summary,
)
from hbm_client._named import AsyncModels, Models
from hbm_client._requests import Prior, Sampler
from hbm_client._retry import RetryPolicy

__all__ = [
    "AsyncClient",
    "AsyncFit",
    "AsyncModels",
    "Client",
    "Comparison",
    "Conflict",
    "Diagnostics",
    "FieldError",
    "Fit",
    "FitFailed",
    "FitResource",
    "GroupEffects",
    "HbmError",
    "InvalidRequest",
    "Loo",
    "ModelEvent",
    "ModelPredictions",
    "ModelRef",
    "ModelSummary",
    "ModelVersion",
    "Models",
    "NamedModel",
    "NotFound",
    "NotReady",
    "ParameterSummary",
    "Ppc",
    "Predictions",
    "Prior",
    "RateLimited",
    "RetryPolicy",
    "Sampler",
    "Summary",
    "Unauthorized",
    "Unavailable",
    "__version__",
]
