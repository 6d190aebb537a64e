"""Derived figures (ESS per second, ratios to rstanarm), the Markdown tables, and where
results are saved."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save(prefix: str, result: dict[str, Any]) -> Path:
    """Write ``result`` as ``bench/results/<prefix>-<UTC time>.json``; its path."""
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{prefix}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


BASELINE = "rstanarm"

WALL_MEANING = {
    "service-http-cold": "POST /v1/fits until its summary is served (first fit of a new worker)",
    "service-http-warm": "the same case with seed 2 right after, in the same worker process "
    "(compile 'reused': the compiled model of the same structure was fed the new data)",
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


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _note(result: dict[str, Any]) -> str:
    """``status (reason): first line of the note``."""
    reason = f" ({result['reason']})" if result.get("reason") else ""
    first = (str(result.get("note", "")).splitlines() or [""])[0][:100]
    return f"{result.get('status')}{reason}: {first}"


def _row(name: str, r: dict[str, Any], parameters: list[str], with_ratios: bool) -> list[str]:
    width = 8 + len(parameters) + (2 if with_ratios else 0)
    if r.get("status") != "ok":
        return [name, _cell(_note(r)), *["—"] * (width - 2)]
    compile_s = _num(r.get("compile_s")) + (" (reused)" if r.get("compiled") is False else "")
    cells = [
        name,
        _num(r["wall_s"]),
        compile_s,
        _num(r.get("sampling_s")),
        _num(r["min_ess_bulk"], 0),
        _num(r["ess_bulk_per_wall_s"], 1),
        _num(r["max_r_hat"], 3),
        _num(r.get("peak_rss_mb"), 0),
        *(_num(r["means"][p], 3) for p in parameters),
    ]
    if with_ratios:
        cells[2:2] = [_num(r.get("wall_vs_rstanarm")) + "×"]
        cells[7:7] = [_num(r.get("ess_per_s_vs_rstanarm")) + "×"]
    return cells


def case_table(name: str, entry: dict[str, Any]) -> list[str]:
    """One case: a heading line and its table (systems as rows)."""
    case, systems = entry["case"], entry["systems"]
    parameters: list[str] = case["parameters"]
    with_ratios = systems.get(BASELINE, {}).get("status") == "ok"
    truth = case.get("truth", {})
    header = [
        "system",
        "wall s",
        "compile s",
        "sampling s",
        "min ESS bulk",
        "ESS/s",
        "max R-hat",
        "peak RSS MB",
        *(_cell(p) + (f" ({truth[p]:g})" if p in truth else "") for p in parameters),
    ]
    if with_ratios:
        header[2:2] = ["wall vs rstanarm"]
        header[7:7] = ["ESS/s vs rstanarm"]
    lines = [
        f"### {name}: `{case['formula']}` ({case['family']}), {case['rows']:,} rows, "
        f"{case['groups']:,} groups",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += [
        "| " + " | ".join(_row(n, r, parameters, with_ratios)) + " |" for n, r in systems.items()
    ]
    if not with_ratios:
        why = _note(systems[BASELINE]) if BASELINE in systems else "not selected"
        lines.append(f"\nNo ratios to rstanarm: it did not finish ({why}).")
    lines += _recompiled(systems)
    return [*lines, ""]


def _recompiled(systems: dict[str, dict[str, Any]]) -> list[str]:
    """A note when the warm service fit compiled its model anew, with the pool pids."""
    warm, cold = systems.get("service-http-warm", {}), systems.get("service-http-cold", {})
    if warm.get("status") != "ok" or warm.get("compiled") is not True:
        return []
    return [
        "\nservice-http-warm compiled its model anew: its pool process held no compiled model "
        f"of this structure (pool pids during the cold fit {cold.get('pool_pids')}, during the "
        f"warm fit {warm.get('pool_pids')})."
    ]


def predictions_line(p: dict[str, Any]) -> str:
    """The ``predictions-1000`` measurement in one line."""
    if p.get("status") != "ok":
        return f"**predictions-1000**: {_note(p)}"
    return (
        f"**predictions-1000** (seed study, after its warm fit; {p['rows']:,} rows: "
        f"{p['seen_rows']} of seen schools, {p['new_rows']} of new ones; kind {p['kind']}): "
        f"median {p['median_ms']:.0f} ms, max {p['max_ms']:.0f} ms over {p['requests']} "
        f"requests after one warm-up request ({p['warmup_ms']:.0f} ms)."
    )


def _latency(kind: str, f: dict[str, Any], expected: str) -> str:
    codes = dict(f["codes"])
    counts = [f"{expected}: {codes.pop(expected, 0)}"]
    if kind == "submit":
        counts.append(f"429: {codes.pop('429', 0)}")
    counts.append(f"other: {sum(codes.values())}")
    if not f["requests"]:
        return f"{kind}: no requests"
    return (
        f"{kind} p50/p95/p99 {f['p50_ms']:.0f}/{f['p95_ms']:.0f}/{f['p99_ms']:.0f} ms "
        f"(max {f['max_ms']:.0f}; {f['requests']:,} requests; {', '.join(counts)})"
    )


def latency_line(a: dict[str, Any]) -> str:
    """The ``api-latency-50-clients`` measurement in one line."""
    if a.get("status") != "ok":
        return f"**api-latency-50-clients**: {_note(a)}"
    saturated = a.get("saturated")
    extra = ""
    if saturated:
        extra = (
            f" Saturated (no wait, {saturated['requests_per_s']:.0f} requests/s): "
            f"{_latency('submit', saturated['submit'], '202')}; "
            f"{_latency('status', saturated['status_poll'], '200')}."
        )
    return (
        f"**api-latency-50-clients** ({a['clients']} clients for {a['duration_s']:.0f} s, "
        f"each waiting {a.get('think_s', 0)} s between requests; "
        f"{a['submit_share']:.0%} tiny-fit submissions, the rest status polls; "
        f"{a['requests_per_s']:.0f} requests/s): {_latency('submit', a['submit'], '202')}; "
        f"{_latency('status', a['status_poll'], '200')}.{extra} Quotas raised for this run "
        "(submissions a minute, fits in progress), so it measures the API, not the quota."
    )


def markdown(report: dict[str, Any]) -> str:
    """One table per case, the service-only measurements, then what the figures mean."""
    lines: list[str] = []
    for name, entry in report["cases"].items():
        lines += case_table(name, entry)
    service = report.get("service", {})
    if "predictions-1000" in service:
        lines += [predictions_line(service["predictions-1000"]), ""]
    if "api-latency-50-clients" in service:
        lines += [latency_line(service["api-latency-50-clients"]), ""]
    s, machine = report["settings"], report["machine"]
    shown = {n for entry in report["cases"].values() for n in entry["systems"]}
    lines += [
        f"{s['chains']} chains × {s['draws']} draws + {s['tune']} tune, seed {s['seed']}, the "
        f"same data for every system; {report['date']}; {machine['cpu_count']} CPUs, "
        f"{machine['platform']}, Python {machine['python']}.",
        "ESS = min bulk ESS over the case's main parameters (columns on the right: posterior "
        "means, true values in brackets); ESS/s per second of wall time; peak RSS of the "
        "fitting process (the service: its fits worker's pool process; children's, e.g. "
        "PyMC's chain processes, are in the JSON).",
        *(f"- {name}: {meaning}" for name, meaning in WALL_MEANING.items() if name in shown),
    ]
    return "\n".join(lines)
