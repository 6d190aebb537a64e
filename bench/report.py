"""Derived figures (ESS per second, ratios to rstanarm) and the Markdown table."""

from __future__ import annotations

from typing import Any

from bench.seed import CHAINS, DRAWS, FORMULA, TUNE

BASELINE = "rstanarm"

WALL_MEANING = {
    "service-http-cold": "POST /v1/fits until its summary is served (first fit of a new worker)",
    "service-http-warm": "the same, right after, in the same worker process",
    "bambi-nutpie-inprocess": "bmb.Model(...) + fit(inference_method='nutpie'), fresh process",
    "nutpie-direct-inprocess": "bmb.Model + build + nutpie.compile_pymc_model + nutpie.sample",
    "bambi-pymc": "bmb.Model(...) + fit(inference_method='pymc'), PyMC NUTS, fresh process",
    "rstanarm": "system.time(stan_glmer(...)) inside R (Rscript start-up not counted)",
}


def add_derived(systems: dict[str, dict[str, Any]]) -> None:
    """Add ESS/s of wall time and, when rstanarm ran, ratios to it, in place."""
    for result in systems.values():
        if result.get("status") == "ok":
            result["ess_bulk_per_wall_s"] = result["min_ess_bulk"] / result["wall_s"]
    base = systems.get(BASELINE, {})
    if base.get("status") != "ok":
        return
    for result in systems.values():
        if result.get("status") == "ok":
            result["wall_vs_rstanarm"] = result["wall_s"] / base["wall_s"]
            result["ess_per_s_vs_rstanarm"] = (
                result["ess_bulk_per_wall_s"] / base["ess_bulk_per_wall_s"]
            )


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}"


def _row(name: str, r: dict[str, Any], with_ratios: bool) -> list[str]:
    if r.get("status") != "ok":
        width = 13 if with_ratios else 11
        first = (str(r.get("note", "")).splitlines() or [""])[0][:80].replace("|", "\\|")
        note = f"{r.get('status')}: {first}"
        return [name, note, *["—"] * (width - 2)]
    means = r["means"]
    cells = [
        name,
        _num(r["wall_s"]),
        _num(r.get("compile_s")),
        _num(r.get("sampling_s")),
        _num(r["min_ess_bulk"], 0),
        _num(r["ess_bulk_per_wall_s"], 1),
        _num(r["max_r_hat"], 3),
        _num(r.get("peak_rss_mb"), 0),
        _num(means["Intercept"], 3),
        _num(means["1|school_sigma"], 3),
        _num(means["sigma"], 3),
    ]
    if with_ratios:
        cells[2:2] = [_num(r.get("wall_vs_rstanarm")) + "×"]
        cells[7:7] = [_num(r.get("ess_per_s_vs_rstanarm")) + "×"]
    return cells


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table with the machine and the meaning of each wall time."""
    systems: dict[str, dict[str, Any]] = report["systems"]
    with_ratios = systems.get(BASELINE, {}).get("status") == "ok"
    header = [
        "system",
        "wall s",
        "compile s",
        "sampling s",
        "min ESS bulk",
        "ESS/s",
        "max R-hat",
        "peak RSS MB",
        "Intercept",
        "school SD",
        "sigma",
    ]
    if with_ratios:
        header[2:2] = ["wall vs rstanarm"]
        header[7:7] = ["ESS/s vs rstanarm"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(_row(n, r, with_ratios)) + " |" for n, r in systems.items()]
    machine = report["machine"]
    notes = [
        f"Seed study `{FORMULA}` (gaussian), 484 rows, {CHAINS} chains × {DRAWS} draws "
        f"+ {TUNE} tune; {report['date']}; {machine['cpu_count']} CPUs, "
        f"{machine['platform']}, Python {machine['python']}.",
        "ESS = min bulk ESS over Intercept, 1|school_sigma, sigma; ESS/s per second of wall "
        "time; means are posterior means; peak RSS of the fitting process (its children's, "
        "e.g. PyMC's chain processes, are in the JSON).",
    ]
    if not with_ratios:
        why = systems.get(BASELINE, {}).get("note", "not selected")
        notes.append(f"No ratios to rstanarm: it did not run ({why}).")
    notes += [f"- {name}: {WALL_MEANING[name]}" for name in systems if name in WALL_MEANING]
    return "\n".join([*lines, "", *notes])
