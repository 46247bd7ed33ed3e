#!/usr/bin/env bash
# Install the Autobahn|Testsuite (wstest) into a Python 2.7 virtualenv.
#
# autobahntestsuite 25.10.1 is Python 2 only. This machine's image carries Python 2.7.18 under
# pyenv (without the venv module), so a Python 3 "bootstrap" venv with virtualenv<20.22 (the last
# releases that can still target 2.7) creates the 2.7 virtualenv.
#
# Idempotent: does nothing when the suite is already installed at the right version.
#
# Environment:
#   WSTEST_VENV  where the 2.7 virtualenv goes (default: <repo>/.venv-wstest)
#   PYTHON2      the Python 2.7 interpreter (default: $(pyenv root)/versions/2.7.18/bin/python)
#   PYTHON3      the Python 3 used for the bootstrap venv (default: python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
suite_version="25.10.1"
venv="${WSTEST_VENV:-$repo/.venv-wstest}"
python3="${PYTHON3:-python3}"

die() { echo "conformance/setup.sh: ERROR: $*" >&2; exit 1; }

if [[ -z "${PYTHON2:-}" ]]; then
    if command -v pyenv >/dev/null 2>&1; then
        PYTHON2="$(pyenv root)/versions/2.7.18/bin/python"
    else
        PYTHON2="${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin/python"
    fi
fi

if [[ ! -x "$PYTHON2" ]]; then
    die "Python 2.7 interpreter not found at '$PYTHON2'.
  The Autobahn|Testsuite runs only under Python 2.7. Install it (e.g. 'pyenv install 2.7.18')
  or point PYTHON2 at a 2.7 interpreter."
fi
if ! py2ver="$("$PYTHON2" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
        || [[ "$py2ver" != "2.7" ]]; then
    die "'$PYTHON2' is not a working Python 2.7 interpreter (got '${py2ver:-nothing}')."
fi

installed() {
    [[ -x "$venv/bin/wstest" ]] &&
        [[ "$("$venv/bin/python" -c 'import autobahntestsuite; print(autobahntestsuite.__version__)' 2>/dev/null)" == "$suite_version" ]]
}

if installed; then
    echo "conformance/setup.sh: autobahntestsuite $suite_version already installed in $venv"
    exit 0
fi

command -v "$python3" >/dev/null 2>&1 || die "no Python 3 interpreter ('$python3') for the bootstrap venv."

boot="$(mktemp -d "${TMPDIR:-/tmp}/wstest-bootstrap.XXXXXX")"
trap 'rm -rf "$boot"' EXIT

echo "conformance/setup.sh: bootstrapping virtualenv<20.22 in $boot"
"$python3" -m venv "$boot" || die "'$python3 -m venv' failed."
"$boot/bin/pip" install --quiet --disable-pip-version-check 'virtualenv<20.22' \
    || die "could not install virtualenv<20.22."

echo "conformance/setup.sh: creating the Python 2.7 virtualenv $venv"
"$boot/bin/virtualenv" --clear --quiet -p "$PYTHON2" "$venv" \
    || die "virtualenv could not create $venv with $PYTHON2."

echo "conformance/setup.sh: installing autobahntestsuite==$suite_version (about 40 s)"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-python-version-warning \
    -c "$here/wstest-constraints.txt" "autobahntestsuite==$suite_version" \
    || die "pip could not install autobahntestsuite==$suite_version into $venv."

installed || die "autobahntestsuite is not importable from $venv after installing it."
"$venv/bin/wstest" --autobahnversion >/dev/null 2>&1 || die "'$venv/bin/wstest' does not run."
echo "conformance/setup.sh: OK: $venv/bin/wstest (autobahntestsuite $suite_version)"
