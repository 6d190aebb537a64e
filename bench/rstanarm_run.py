"""rstanarm's ``stan_glmer`` on a case, through ``Rscript`` when R has it.

R writes the draws of the case's main parameters (a group SD as the square root of
rstanarm's variance ``Sigma[g:t,t]``) to CSV under their Bambi names; Python computes means,
bulk ESS and R-hat from them with ArviZ, as for every other system. When R's ``posterior``
package is there, its ``ess_bulk`` and ``rhat`` are used and ArviZ's are kept beside them.
Without R or rstanarm the system is skipped, never failed; past ``timeout_s`` the Rscript
process group is killed and the system is skipped with reason ``timeout``.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

from bench.cases import CHAINS, DRAWS, SEED, TUNE, Case
from bench.stats import summarize_parameters

R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
data_csv <- args[1]; out <- args[2]
chains <- as.integer(args[3]); draws <- as.integer(args[4]); warmup <- as.integer(args[5])
seed <- as.integer(args[6]); formula <- as.formula(args[7]); family <- eval(parse(text = args[8]))
params <- read.csv(args[9], stringsAsFactors = FALSE)
suppressPackageStartupMessages(library(rstanarm))
d <- read.csv(data_csv)
elapsed <- system.time(
  fit <- stan_glmer(formula, data = d, family = family,
                    chains = chains, iter = warmup + draws, warmup = warmup,
                    seed = seed, cores = 1, refresh = 0)
)[["elapsed"]]
a <- as.array(fit, pars = params$r_name)[, , params$r_name, drop = FALSE]
for (i in which(startsWith(params$r_name, "Sigma["))) a[, , i] <- sqrt(a[, , i])
draws_out <- do.call(rbind, lapply(seq_len(dim(a)[2]), function(ch) {
  m <- a[, ch, , drop = TRUE]
  cbind(ch - 1, seq_len(dim(a)[1]) - 1, matrix(m, nrow = dim(a)[1]))
}))
colnames(draws_out) <- c("chain", "draw", params$name)
write.csv(draws_out, file.path(out, "draws.csv"), row.names = FALSE)
stan_time <- rstan::get_elapsed_time(fit$stanfit)
meta <- data.frame(key = c("fit_s", "warmup_s", "sampling_s", "r_version", "rstanarm",
                           "rstan"),
                   value = c(elapsed, sum(stan_time[, 1]), sum(stan_time[, 2]),
                             R.version.string, as.character(packageVersion("rstanarm")),
                             as.character(packageVersion("rstan"))))
if (requireNamespace("posterior", quietly = TRUE)) {
  n <- dim(a)[3]
  stats <- data.frame(name = params$name,
                      ess_bulk = sapply(seq_len(n), function(i) posterior::ess_bulk(a[, , i])),
                      rhat = sapply(seq_len(n), function(i) posterior::rhat(a[, , i])))
  write.csv(stats, file.path(out, "posterior.csv"), row.names = FALSE)
  meta <- rbind(meta, data.frame(key = "posterior",
                                 value = as.character(packageVersion("posterior"))))
}
write.csv(meta, file.path(out, "meta.csv"), row.names = FALSE)
"""


class RscriptTimeout(Exception):
    """Rscript ran past its time limit and was killed."""


@cache
def unavailable() -> str | None:
    """Why rstanarm cannot run here, or None when it can (checked once per process)."""
    if shutil.which("Rscript") is None:
        return "Rscript is not installed (apt-get install r-cran-rstanarm)"
    check = 'quit(status = !requireNamespace("rstanarm", quietly = TRUE))'
    found = subprocess.run(["Rscript", "-e", check], capture_output=True, timeout=120)
    if found.returncode != 0:
        return "R has no rstanarm package (apt-get install r-cran-rstanarm)"
    return None


def run_rstanarm(case: Case, timeout_s: float = 900) -> dict[str, Any]:
    """Fit ``case`` with stan_glmer in a fresh Rscript; skipped with a note when R cannot
    or when it runs past ``timeout_s``."""
    reason = unavailable()
    if reason is not None:
        return {"status": "skipped", "reason": "unavailable", "note": reason}
    with tempfile.TemporaryDirectory(prefix="hbm-bench-r-") as folder:
        out = Path(folder)
        (out / "fit.R").write_text(R_SCRIPT)
        case.write_csv(out / "data.csv")
        with (out / "params.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerows([("r_name", "name"), *case.r_parameters.items()])
        args = [out / "data.csv", out, CHAINS, DRAWS, TUNE, SEED, case.r_formula, case.r_family]
        command = ["Rscript", str(out / "fit.R"), *map(str, args), str(out / "params.csv")]
        try:
            process_s, peak_kb = _run_measured(command, out, timeout_s)
        except RscriptTimeout:
            note = f"Rscript killed after {timeout_s:.0f} s (--rstanarm-timeout)"
            return {"status": "skipped", "reason": "timeout", "note": note}
        meta = _read_meta(out / "meta.csv")
        result = {
            "wall_s": float(meta["fit_s"]),
            "process_s": process_s,
            "compile_s": 0.0,
            "compile_note": "rstanarm's Stan programs are compiled when the package is built",
            "warmup_s": float(meta["warmup_s"]),
            "sampling_s": float(meta["warmup_s"]) + float(meta["sampling_s"]),
            "peak_rss_mb": peak_kb / 1024,
            "versions": {
                k: meta[k] for k in ("r_version", "rstanarm", "rstan", "posterior") if k in meta
            },
        }
        result |= _statistics(out, case)
    return result


def _run_measured(command: list[str], out: Path, timeout_s: float) -> tuple[float, int]:
    """Run ``command`` in its own process group; its wall time and peak RSS (KB) from
    ``wait4``. Raises :class:`RscriptTimeout` past ``timeout_s``, RuntimeError on failure."""
    log = out / "rscript.log"
    killed = threading.Event()
    with log.open("wb") as handle:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=handle, stderr=handle, start_new_session=True)

        def kill() -> None:
            killed.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        process_s = time.perf_counter() - started
    if killed.is_set():
        raise RscriptTimeout
    if process.returncode != 0:
        raise RuntimeError(f"Rscript exited {process.returncode}: {log.read_text()[-1500:]}")
    return process_s, usage.ru_maxrss


def _read_meta(path: Path) -> dict[str, str]:
    with path.open() as handle:
        return {row["key"]: row["value"] for row in csv.DictReader(handle)}


def _statistics(out: Path, case: Case) -> dict[str, Any]:
    """Means, ESS and R-hat: R's ``posterior`` figures when present, ArviZ's always."""
    import numpy as np
    import xarray as xr

    from bench.stats import posterior_stats

    with (out / "draws.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    n_chains = 1 + max(int(float(r["chain"])) for r in rows)
    variables = {
        name: (("chain", "draw"), np.array([float(r[name]) for r in rows]).reshape(n_chains, -1))
        for name in case.parameters
    }
    by_arviz = posterior_stats(xr.Dataset(variables), case.parameters)
    posterior_csv = out / "posterior.csv"
    if not posterior_csv.exists():
        return {**by_arviz, "ess_source": "arviz (from rstanarm's draws)"}
    with posterior_csv.open() as handle:
        r_stats = {row["name"]: row for row in csv.DictReader(handle)}
    per_param = {
        name: {
            "mean": by_arviz["means"][name],
            "ess_bulk": float(r_stats[name]["ess_bulk"]),
            "r_hat": float(r_stats[name]["rhat"]),
        }
        for name in case.parameters
    }
    return {
        **summarize_parameters(per_param),
        "ess_source": "R posterior::ess_bulk / rhat (group SDs on the sqrt scale)",
        "arviz": {k: by_arviz[k] for k in ("min_ess_bulk", "max_r_hat", "parameters")},
    }
