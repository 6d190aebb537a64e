"""Request validation beyond the schema: text, data shape, limits, formula, family and priors.

Everything here runs in the API before anything is queued (the dry run refuses the same),
and only the API imports it; the worker runs the formula check (``service.core.formula``)
again before Bambi sees the text. Each problem becomes an InvalidRequest that names the
field and what is wrong.

Modules, one job each:

- ``fits``: a fit request checked completely, in order, into the spec the worker runs;
- ``predictions``: new rows checked against the types and transforms of training;
- ``data``: records or columns into bounded columns of finite values of one type;
- ``text``: strings UTF-8 cannot encode (a lone surrogate) refused wherever they are;
- ``formulas``: the main and distributional formulas of a request, checked, with terms;
- ``design``: the size of the design Bambi would build and the levels of its factors;
- ``transforms``: every transform's values on the data (``log`` at 0 and its kin);
- ``priors``: the allow-list of prior distributions and their parameters;
- ``sampler``: the sampler's settings with defaults filled in, bounded;
- ``csvdata``: CSV uploads read as a stream into typed columns, bounded;
- ``comparisons``: fits compared by LOO are of the same response and rows.
"""

from service.api.validation.comparisons import check_comparable, check_comparison_cost
from service.api.validation.csvdata import parse_csv
from service.api.validation.fits import validate_fit_request
from service.api.validation.predictions import validate_prediction_data
from service.api.validation.priors import check_priors

__all__ = [
    "check_comparable",
    "check_comparison_cost",
    "check_priors",
    "parse_csv",
    "validate_fit_request",
    "validate_prediction_data",
]
