#!/usr/bin/env bash
# Quick start: install what is needed, then the main job.  With a display:
# napari with the plugin docked and the CT sample loaded.  Headless: segment
# the CT sample's lung tumour with the default engine into out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m napari_samlab.demo "$@"
