"""Fits compared by PSIS-LOO must predict the same numbers: the same response, written the
same way, on the same rows. Anything else would rank models by elpd values of different
data (a silently wrong answer), so it is refused with the reason."""

from __future__ import annotations

import re

from service.core.errors import InvalidRequest
from service.core.formula import check_formula
from service.core.schemas import FitSpec

FIELD = "fit_ids"
#: Log likelihood values (rows x draws) one comparison may compute for fits whose LOO is
#: not stored yet: about one 100,000-row fit of 4,000 draws, 20 s of a worker. Beyond it,
#: the client asks each fit's ``/loo`` first (each one call, each stored).
MAX_UNCOMPUTED_VALUES = 4 * 10**8


def check_comparable(specs: dict[str, FitSpec]) -> None:
    """A 422 naming the first fit that was not fitted on the first one's response and rows."""
    (first_id, first), *others = specs.items()
    reference = _response_data(first)
    for fit_id, spec in others:
        response, values = _response_data(spec)
        if response != reference[0]:
            raise InvalidRequest.one(
                FIELD,
                f"fit {fit_id} models '{response}' and fit {first_id} '{reference[0]}': "
                "LOO compares predictions of the same response only",
            )
        if spec.dropped_rows != first.dropped_rows or values != reference[1]:
            raise InvalidRequest.one(
                FIELD,
                f"fits {first_id} and {fit_id} were fitted on different data (their rows or "
                "response values differ): LOO compares fits of the same rows only",
            )


def _response_data(spec: FitSpec) -> tuple[str, list[object]]:
    """The response as written (left of ``~``, spaces removed) and the values of every
    column it uses (the response and binomial trials)."""
    info = check_formula(spec.formula, spec.columns)
    written = re.sub(r"\s+", "", spec.formula.split("~", 1)[0])
    used = [info.response, *([info.trials] if isinstance(info.trials, str) else [])]
    return written, [spec.columns[name] for name in used]


def check_comparison_cost(uncomputed: dict[str, int]) -> None:
    """A 422 when the fits whose LOO is not stored yet (id -> rows x draws) would take one
    call too long to compute; it says how to proceed."""
    if sum(uncomputed.values()) > MAX_UNCOMPUTED_VALUES:
        ids = ", ".join(sorted(uncomputed))
        raise InvalidRequest.one(
            FIELD,
            f"the LOO of fits {ids} is not computed yet and together they are too large for "
            "one call: request GET /v1/fits/{id}/loo for each first, then compare",
        )
