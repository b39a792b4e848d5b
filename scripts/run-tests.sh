#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is needed, then runs
# pytest under a virtual X server (napari needs OpenGL; Xvfb + Mesa has it,
# Qt's offscreen platform does not).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
mkdir -p test-artifacts
export QT_QPA_PLATFORM=xcb
export PYTHONFAULTHANDLER=1
# one pytest worker per core (SAMLAB_TEST_WORKERS, default 2: CI's cores), each
# with one PyTorch/OpenMP thread so the two do not fight over the cores
WORKERS=${SAMLAB_TEST_WORKERS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# pytest exits 5 when nothing was collected: that is a failure here
xvfb-run -a -s "-screen 0 1600x1200x24 -nolisten tcp" \
  .venv/bin/python -m pytest -ra -n "$WORKERS" "$@"
