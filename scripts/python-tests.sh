#!/usr/bin/env bash
# Builds the strata Python package into a venv and runs its pytest suite.
#
# The venv ($STRATA_VENV, by default in ~/.cache/strata, outside the clone,
# so fresh clones and CI runs on the same machine share it) is created once
# and filled from PyPI with python/requirements-test.txt (torch is large: the
# first run takes minutes); a stamp keyed on that file skips the install
# afterwards. pip keeps its cache. The package is built with the venv's nanobind and scikit-build-core
# (no build isolation, so no network) in a reused build dir ($STRATA_BUILD/python).
# Fails, never skips: PyPI unreachable, a failed build, or no test collected.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PYTHON=${PYTHON:-python3}
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
  { echo "python-tests: error: $PYTHON does not run; install python3" >&2; exit 1; }
VENV=${STRATA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/strata/venv-py$PYVER}
REQS=$STRATA_ROOT/python/requirements-test.txt

fail() {
  echo "python-tests: error: $*" >&2
  exit 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV" || fail "could not create a venv at $VENV with $PYTHON (install python3-venv)"
fi
stamp=$VENV/.strata-requirements.sha256
want=$(sha256sum "$REQS" | cut -d' ' -f1)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "python-tests: installing $(grep -v '^#' "$REQS" | tr '\n' ' ')into $VENV (first run: minutes)" >&2
  if ! "$VENV/bin/pip" install --disable-pip-version-check -q --retries 2 --timeout 60 -r "$REQS"; then
    fail "could not install python/requirements-test.txt from PyPI into $VENV; check the network" \
      "or the pip index (PIP_INDEX_URL). The Python tests are part of the suite and do not skip."
  fi
  echo "$want" >"$stamp"
fi

"$VENV/bin/pip" install --disable-pip-version-check -q --no-build-isolation \
  -Cbuild-dir="$STRATA_BUILD/python/{wheel_tag}" "$STRATA_ROOT" ||
  fail "pip install of the strata package failed (log above)"

cd "$STRATA_ROOT"
rc=0
"$VENV/bin/python" -m pytest -q python/tests "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
  fail "pytest ran no tests in python/tests (exit 5): a suite that runs nothing must not pass"
fi
exit $rc
