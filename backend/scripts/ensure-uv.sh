# Sourced by run.sh and test.sh: puts uv on PATH (installing it from PyPI if
# needed) and syncs the locked dependencies into backend/.venv.
export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv >/dev/null 2>&1; then
    echo "Installing uv from PyPI..."
    python3 -m pip install --quiet uv 2>/dev/null \
        || python3 -m pip install --quiet --user --break-system-packages uv
fi
uv sync --frozen --quiet
