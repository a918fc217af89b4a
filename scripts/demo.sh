#!/usr/bin/env bash
# The README's main job: the demo grid (targets none / pixel / hog / flow:dis x 2 seeds, tiny preset)
# on the built-in synthetic dataset. `ablate run` synthesises the dataset and extracts every target
# the grid needs once, then trains the runs that are not done yet; `ablate report` writes the tables
# and plots. Rerunning resumes: finished runs are skipped.
set -euo pipefail
RUNS=${RUNS:-runs/demo}
ablate run ablations/grids/demo.yaml --runs-dir "$RUNS" --jobs "${JOBS:-1}"
mvmtargets verify --cache cache --dataset synthetic
ablate report "$RUNS" --out "$RUNS/report"
echo "report: $RUNS/report/report.md"
