#!/usr/bin/env bash
# Are pyproject.toml's lower bounds true?  Builds a throw-away virtual
# environment with every dependency at its lowest allowed version
# (constraints "pkg==floor" or "pkg==floor.*" from the ">=" bounds), installs the package
# there and runs a subset of the tests that exercises every dependency's API
# (readers/writers, DICOM, the zarr cache, checkpoints, the CLI).
#
#   bash scripts/check-min-versions.sh                # default test subset
#   bash scripts/check-min-versions.sh tests/test_io_roundtrip.py -x
#
# Not part of CI (it downloads and installs ~2 GB and takes 10-20 minutes).
# VENV (default /tmp/samlab-minver) is rebuilt from scratch on each run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/samlab-minver}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
CONSTRAINTS="$VENV.constraints.txt"

# ">=" floors of [project.dependencies] and the test extra, as "name==floor"
"$PY" - "$CONSTRAINTS" <<'PYEOF'
import re, sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
reqs = list(project["dependencies"])
for extra in ("test",):
    reqs += project.get("optional-dependencies", {}).get(extra, [])
lines = []
for req in reqs:
    m = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+?)\s*>=\s*([^,;\s]+)", req)
    if m:
        name = re.sub(r"\[.*\]", "", m.group(1))
        floor = m.group(2)
        # ">=2023.1" admits 2023.1.23 but no release is called 2023.1: pin the
        # floor's release series (X.Y.*) when the floor names no patch level
        pin = floor if floor.count(".") >= 2 else f"{floor}.*"
        lines.append(f"{name}=={pin}")
with open(sys.argv[1], "w") as f:
    f.write("\n".join(lines) + "\n")
print("floors:", ", ".join(lines))
PYEOF

rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# pip refuses (ResolutionImpossible) when two floors cannot be installed together
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -e ".[test]"
echo "installed:"
"$VENV/bin/python" -m pip list --format=freeze | grep -i -E "^($(sed 's/==.*//' "$CONSTRAINTS" | paste -sd'|'))==" || true

if [ $# -eq 0 ]; then
  set -- -q -x -m "not slow and not gui" \
    tests/test_checkpoints.py tests/test_io_roundtrip.py tests/test_cache_settings.py \
    tests/test_dicom_read.py tests/test_dicom_seg.py tests/test_cli.py
fi
export QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-offscreen}
"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
