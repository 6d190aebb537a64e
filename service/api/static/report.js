// hbm-service report page: live progress from the fit's event stream (Server-Sent
// Events), LOO on request, and a note on plots that are not available. Everything the
// server sends is written with textContent, never parsed as HTML.
"use strict";

(function () {
  const report = document.getElementById("report");
  if (!report) {
    return;
  }

  function text(id, value) {
    const element = document.getElementById(id);
    if (element) {
      element.textContent = value;
    }
  }

  function cell(row, value, numeric) {
    const td = document.createElement("td");
    td.textContent = String(value);
    if (numeric) {
      td.className = "num";
    }
    row.appendChild(td);
    return td;
  }

  // Show a fit resource (as GET /v1/fits/{id} answers it) in the status section.
  function show(fit) {
    const status = document.getElementById("status");
    status.textContent = fit.status;
    status.className = "status status-" + fit.status;
    report.dataset.status = fit.status;
    text("phase", fit.progress ? ": " + fit.progress.phase : "");
    const overall = document.getElementById("overall");
    if (overall) {
      overall.value = fit.progress ? fit.progress.fraction : 0;
    }
    const body = document.querySelector("#chains tbody");
    if (body && fit.progress) {
      body.replaceChildren();
      for (const chain of fit.progress.chains) {
        const row = document.createElement("tr");
        cell(row, chain.chain, false);
        cell(row, chain.draws_done, true).classList.add("draws");
        cell(row, chain.draws_total, true);
        cell(row, chain.tuning ? "warm-up" : "sampling", false);
        cell(row, chain.divergences, true);
        body.appendChild(row);
      }
    }
  }

  function follow() {
    const source = new EventSource(report.dataset.events);
    report.dataset.updates = "0";
    const update = function (event) {
      show(JSON.parse(event.data));
      report.dataset.updates = String(Number(report.dataset.updates) + 1);
    };
    source.addEventListener("status", update);
    source.addEventListener("progress", update);
    source.addEventListener("end", function (event) {
      source.close();
      update(event);
      document.getElementById("progress").hidden = true;
      document.getElementById("finished").hidden = false;
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        text("live", "Live updates stopped: load the page again.");
      }
    });
  }

  // PSIS-LOO: computed by a worker on first request, so only when asked.
  function looOnRequest() {
    const button = document.getElementById("loo-button");
    if (!button) {
      return;
    }
    const section = document.getElementById("loo");
    button.addEventListener("click", async function () {
      button.disabled = true;
      button.textContent = "Computing…";
      const error = document.getElementById("loo-error");
      try {
        const response = await fetch(section.dataset.loo, { headers: { Accept: "application/json" } });
        const body = await response.json();
        if (!response.ok) {
          throw new Error(body.detail || "the request failed (" + response.status + ")");
        }
        const fields = {
          elpd_loo: body.elpd_loo.toFixed(2),
          se: body.se.toFixed(2),
          p_loo: body.p_loo.toFixed(2),
          looic: body.looic.toFixed(2),
          bad_k: body.pareto_k.bad + body.pareto_k.very_bad,
          warning: body.warning || "none",
        };
        for (const [name, value] of Object.entries(fields)) {
          section.querySelector('[data-field="' + name + '"]').textContent = String(value);
        }
        document.getElementById("loo-table").hidden = false;
        document.getElementById("loo-ask").hidden = true;
      } catch (failure) {
        error.textContent = "LOO could not be computed: " + failure.message;
        error.hidden = false;
        button.disabled = false;
        button.textContent = "Try again";
      }
    });
  }

  // A plot the service cannot draw (yet) is marked, not shown broken.
  function markMissingPlots() {
    for (const image of document.querySelectorAll("figure.plot img")) {
      const missing = function () {
        image.closest("figure").classList.add("missing");
      };
      if (image.complete && image.naturalWidth === 0) {
        missing();
      } else {
        image.addEventListener("error", missing);
      }
    }
  }

  const status = report.dataset.status;
  if (status === "queued" || status === "running") {
    follow();
  }
  looOnRequest();
  markMissingPlots();
})();
