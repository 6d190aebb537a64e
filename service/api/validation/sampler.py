"""The sampler a fit will run with: the request's settings, the service's defaults for what
it leaves out (a random seed among them), and the service's limits on each."""

from __future__ import annotations

import secrets

from service.core.errors import FieldError, InvalidRequest
from service.core.families import default_target_accept
from service.core.schemas import FitRequest, ResolvedSampler
from service.core.settings import Settings


def resolve_sampler(request: FitRequest, settings: Settings) -> ResolvedSampler:
    """The request's sampler with defaults filled in; refused past a limit."""
    s = request.sampler
    resolved = ResolvedSampler(
        draws=s.draws if s.draws is not None else settings.default_draws,
        tune=s.tune if s.tune is not None else settings.default_tune,
        chains=s.chains if s.chains is not None else settings.default_chains,
        seed=s.seed if s.seed is not None else secrets.randbelow(2**32),
        target_accept=s.target_accept or default_target_accept(request.family),
        method=s.method,
        refit_divergent=s.refit_divergent,
        time_limit_s=s.time_limit_s or settings.fit_time_limit_s,
        parameterization=s.parameterization,
        adaptation=s.adaptation,
    )
    limits = {
        "draws": settings.max_draws,
        "tune": settings.max_tune,
        "chains": settings.max_chains,
        "time_limit_s": settings.max_fit_time_limit_s,
    }
    errors = [
        FieldError(f"sampler.{name}", f"{getattr(resolved, name)} is above the limit of {limit}")
        for name, limit in limits.items()
        if getattr(resolved, name) > limit
    ]
    total = resolved.draws * resolved.chains
    if total > settings.max_draws_x_chains:
        errors.append(
            FieldError(
                "sampler",
                f"draws x chains is {total}; the limit is {settings.max_draws_x_chains}",
            )
        )
    if errors:
        raise InvalidRequest(errors)
    return resolved
