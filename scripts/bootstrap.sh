#!/usr/bin/env bash
# Installs everything napari-samlab needs on a fresh Debian 12 machine, then
# stays out of the way: a second run with an unchanged pyproject.toml is a
# no-op.  Used by scripts/quickstart.sh and scripts/run-tests.sh.
#   - Debian packages: Xvfb + Mesa + Qt's xcb libraries (napari needs OpenGL;
#     Qt's offscreen platform has none), dicom3tools (dciodvfy checks the
#     DICOM we write).  Installed as root, or through sudo for a user.
#   - Python packages: a virtual environment in .venv with the package
#     installed editable, plus the test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libgl1 libfontconfig1 libdbus-1-3
  libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0
  libxi6 libsm6 libice6 libxrender1 libxext6
  dicom3tools
)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3; do command -v "$c" >/dev/null 2>&1 && { PY=$c; break; }; done
fi
[ -n "$PY" ] || { echo "bootstrap: no python3 found; install Python 3.11 (apt-get install python3)" >&2; exit 1; }
# Debian's own python3 ships venv/ensurepip separately
"$PY" -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" = none ]; then
    echo "bootstrap: these Debian packages are missing and there is no root or sudo to install them: ${missing[*]}" >&2
    echo "bootstrap: ask an administrator to run: apt-get install ${missing[*]}" >&2
  else
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

VENV=.venv
STAMP=$VENV/.samlab-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing Python packages into $VENV (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # sam2 (MedSAM2 / SAM 2.1) is an sdist whose build imports torch: torch first, then
  # sam2 built against it without its CUDA extension (SAM2_BUILD_CUDA=0; models/sam2_engine.py
  # does the extension's hole filling on the CPU), then the package
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/python" -c "import sam2" >/dev/null 2>&1 || \
    SAM2_BUILD_CUDA=0 "$VENV/bin/python" -m pip install -q --no-build-isolation "sam2==1.1.0"
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  echo "$want" > "$STAMP"
fi
