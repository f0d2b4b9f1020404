# The interpreter of the eval scripts, sourced by them: $PYTHON, else the active virtualenv's,
# else the repository's .venv (make install).
_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -z "${VIRTUAL_ENV:-}" && -x "$_REPO_ROOT/.venv/bin/python" ]]; then
        PYTHON="$_REPO_ROOT/.venv/bin/python"
    else
        PYTHON=python
    fi
fi
