#!/usr/bin/env bash
# Build the netorch training image (default: offline, tag netorch:latest); a no-op when the
# image is up to date. Thin wrapper over `netorch image build`; arguments go to it unchanged:
#   scripts/build-image.sh [--offline|--online] [--tag TAG] [--base-image IMAGE] [--force] [-q]
# Python: $NETORCH_PYTHON, else the active virtualenv, else ./.venv, else python3.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

if [[ -n ${NETORCH_PYTHON:-} ]]; then
    py=$NETORCH_PYTHON
elif [[ -n ${VIRTUAL_ENV:-} && -x $VIRTUAL_ENV/bin/python ]]; then
    py=$VIRTUAL_ENV/bin/python
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi

# NETORCH_PYTHON is this script's, not a setting: netorch would warn about it.
exec env -u NETORCH_PYTHON "$py" -m orchestrator.cli image build "$@"
