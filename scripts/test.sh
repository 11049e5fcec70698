#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need from this repo's own
# files, then runs the whole suite. Safe to run again: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt
# --no-build-isolation: build the native extension against the torch installed above instead of
# downloading a fresh torch into an isolated build environment.
python -m pip install -q --no-build-isolation -e ".[dev]"
python -m pytest -q "$@"
