"""Load benchmark of the API: `bash bench/run.sh --help` (see bench/run.py)."""
