#!/usr/bin/env bash
# The README's main job: the demo grid (ablations/grids/demo.yaml: the no-MVM baseline and the
# palette positive control over 6 seeds, hog and flow:dis on seed 0; tiny preset) on the built-in
# synthetic dataset. `ablate run` synthesises the dataset and extracts every target the grid needs
# once, then trains the runs that are not done yet; `ablate report` writes the tables and plots.
# Rerunning resumes: finished runs are skipped. Two runs at a time with one thread each finish the
# grid sooner than one run with two threads on a 2-core machine.
set -euo pipefail
RUNS=${RUNS:-runs/demo}
echo "demo: 14 tiny training runs, ${JOBS:-2} at a time: about 12.5 minutes on an idle 2-core x86 CPU" \
     "(measured: docs/performance.md, 'Main job')"
ablate run ablations/grids/demo.yaml --runs-dir "$RUNS" --jobs "${JOBS:-2}"
mvmtargets verify --cache cache --dataset demo
ablate report "$RUNS" --out "$RUNS/report"
echo "report: $RUNS/report/report.md"
