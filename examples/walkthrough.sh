#!/usr/bin/env bash
# The seed study with curl: fit `score ~ (1 | school)` to 484 students in 20 schools, read
# the summary, the 20 school effects and the diagnostics, and predict for new schools.
# Start the service first (`make run`), then: bash examples/walkthrough.sh
set -euo pipefail
API=${API:-http://127.0.0.1:8000}
here=$(cd "$(dirname "$0")" && pwd)

# 1. The request body: the CSV as records, the formula, sampler settings (seed: reproducible).
body=$(python3 - "$here/../data/seed_students.csv" <<'PY'
import csv, json, sys
rows = [{"school": int(r["school"]), "score": float(r["score"])} for r in csv.DictReader(open(sys.argv[1]))]
print(json.dumps({
    "data": rows,
    "formula": "score ~ (1 | school)",
    "family": "gaussian",
    "sampler": {"chains": 4, "draws": 1000, "tune": 1000, "seed": 2024},
    "name": "seed study",
}))
PY
)

# 2. Submit: 202 Accepted, with the fit's URL in the Location header.
location=$(curl -sS -o /dev/null -w '%header{location}' -X POST "$API/v1/fits" \
  -H 'content-type: application/json' --data "$body")
echo "fit: $API$location"

# 3. Poll until the fit has succeeded (or failed: the error is in the record, as data).
while true; do
  status=$(curl -sS "$API$location" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
  echo "status: $status"
  case "$status" in succeeded|failed|cancelled) break ;; esac
  sleep 1
done
curl -sS "$API$location"; echo

# 4. Fixed effects, the school-level SD and the residual SD (94% HDI by default).
curl -sS "$API$location/summary"; echo
# ... or a 90% equal-tailed interval.
curl -sS "$API$location/summary?prob=0.9&interval=eti"; echo

# 5. Each school's partially pooled effect (ranef) and total (coef), with n_obs.
curl -sS "$API$location/groups/school"; echo

# 6. Convergence: R-hat, ESS, divergences and a verdict in words.
curl -sS "$API$location/diagnostics"; echo

# 7. Predict scores for a student in school 3 (seen) and in two schools not in the data.
curl -sS -X POST "$API$location/predictions" -H 'content-type: application/json' \
  --data '{"data": {"school": [3, 101, 102]}, "kind": "response", "seed": 1}'; echo
