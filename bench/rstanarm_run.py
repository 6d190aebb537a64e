"""rstanarm's ``stan_glmer`` on the seed study, through ``Rscript`` when R has it.

R writes the draws of the three main parameters (the school SD as the square root of
rstanarm's variance ``Sigma[school:(Intercept),(Intercept)]``) to CSV; Python computes
means, bulk ESS and R-hat from them with ArviZ, as for every other system. When R's
``posterior`` package is there, its ``ess_bulk`` and ``rhat`` are used and ArviZ's are
kept beside them. Without R or rstanarm the system is skipped, never failed.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.seed import CHAINS, DATA_CSV, DRAWS, PARAMETERS, SEED, TUNE, summarize_parameters

#: rstanarm's names for the three parameters, in the order of :data:`PARAMETERS`.
R_NAMES = ("(Intercept)", "Sigma[school:(Intercept),(Intercept)]", "sigma")

R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
data_csv <- args[1]; out <- args[2]
chains <- as.integer(args[3]); draws <- as.integer(args[4]); warmup <- as.integer(args[5])
seed <- as.integer(args[6])
suppressPackageStartupMessages(library(rstanarm))
d <- read.csv(data_csv)
d$school <- factor(d$school)
elapsed <- system.time(
  fit <- stan_glmer(score ~ (1 | school), data = d, family = gaussian(),
                    chains = chains, iter = warmup + draws, warmup = warmup,
                    seed = seed, cores = 1, refresh = 0)
)[["elapsed"]]
pars <- c("(Intercept)", "Sigma[school:(Intercept),(Intercept)]", "sigma")
a <- as.array(fit, pars = pars)
a[, , 2] <- sqrt(a[, , 2])
rows <- do.call(rbind, lapply(seq_len(dim(a)[2]), function(ch) data.frame(
  chain = ch - 1, draw = seq_len(dim(a)[1]) - 1,
  Intercept = a[, ch, 1], school_sd = a[, ch, 2], sigma = a[, ch, 3])))
write.csv(rows, file.path(out, "draws.csv"), row.names = FALSE)
stan_time <- rstan::get_elapsed_time(fit$stanfit)
meta <- data.frame(key = c("fit_s", "warmup_s", "sampling_s", "r_version", "rstanarm",
                           "rstan"),
                   value = c(elapsed, sum(stan_time[, 1]), sum(stan_time[, 2]),
                             R.version.string, as.character(packageVersion("rstanarm")),
                             as.character(packageVersion("rstan"))))
if (requireNamespace("posterior", quietly = TRUE)) {
  stats <- data.frame(name = dimnames(a)[[3]],
                      ess_bulk = sapply(1:3, function(i) posterior::ess_bulk(a[, , i])),
                      rhat = sapply(1:3, function(i) posterior::rhat(a[, , i])))
  write.csv(stats, file.path(out, "posterior.csv"), row.names = FALSE)
  meta <- rbind(meta, data.frame(key = "posterior",
                                 value = as.character(packageVersion("posterior"))))
}
write.csv(meta, file.path(out, "meta.csv"), row.names = FALSE)
"""


def unavailable() -> str | None:
    """Why rstanarm cannot run here, or None when it can."""
    if shutil.which("Rscript") is None:
        return "Rscript is not installed (apt-get install r-cran-rstanarm)"
    check = 'quit(status = !requireNamespace("rstanarm", quietly = TRUE))'
    found = subprocess.run(["Rscript", "-e", check], capture_output=True, timeout=120)
    if found.returncode != 0:
        return "R has no rstanarm package (apt-get install r-cran-rstanarm)"
    return None


def run_rstanarm(timeout_s: float = 1800) -> dict[str, Any]:
    """Fit with stan_glmer in a fresh Rscript; skipped with a note when R cannot."""
    reason = unavailable()
    if reason is not None:
        return {"status": "skipped", "note": reason}
    with tempfile.TemporaryDirectory(prefix="hbm-bench-r-") as folder:
        out = Path(folder)
        script = out / "fit.R"
        script.write_text(R_SCRIPT)
        args = [str(a) for a in (DATA_CSV, out, CHAINS, DRAWS, TUNE, SEED)]
        process_s, peak_kb = _run_measured(["Rscript", str(script), *args], out, timeout_s)
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
        result |= _statistics(out)
    return result


def _run_measured(command: list[str], out: Path, timeout_s: float) -> tuple[float, int]:
    """Run ``command``; its wall time and peak RSS (KB) from ``wait4``. Raises on failure."""
    log = out / "rscript.log"
    with log.open("wb") as handle:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=handle, stderr=handle)
        timer = threading.Timer(timeout_s, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        process_s = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"Rscript exited {process.returncode}: {log.read_text()[-1500:]}")
    return process_s, usage.ru_maxrss


def _read_meta(path: Path) -> dict[str, str]:
    with path.open() as handle:
        return {row["key"]: row["value"] for row in csv.DictReader(handle)}


def _statistics(out: Path) -> dict[str, Any]:
    """Means, ESS and R-hat: R's ``posterior`` figures when present, ArviZ's always."""
    import numpy as np
    import xarray as xr

    from bench.seed import posterior_stats

    with (out / "draws.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    columns = {"Intercept": "Intercept", "1|school_sigma": "school_sd", "sigma": "sigma"}
    n_chains = 1 + max(int(r["chain"]) for r in rows)
    variables = {
        name: (
            ("chain", "draw"),
            np.array([float(r[column]) for r in rows]).reshape(n_chains, -1),
        )
        for name, column in columns.items()
    }
    by_arviz = posterior_stats(xr.Dataset(variables))
    posterior_csv = out / "posterior.csv"
    if not posterior_csv.exists():
        return {**by_arviz, "ess_source": "arviz (from rstanarm's draws)"}
    with posterior_csv.open() as handle:
        r_stats = {row["name"]: row for row in csv.DictReader(handle)}
    per_param = {
        name: {
            "mean": by_arviz["means"][name],
            "ess_bulk": float(r_stats[r_name]["ess_bulk"]),
            "r_hat": float(r_stats[r_name]["rhat"]),
        }
        for name, r_name in zip(PARAMETERS, R_NAMES, strict=True)
    }
    return {
        **summarize_parameters(per_param),
        "ess_source": "R posterior::ess_bulk / rhat (school SD on the sqrt scale)",
        "arviz": {k: by_arviz[k] for k in ("min_ess_bulk", "max_r_hat", "parameters")},
    }
