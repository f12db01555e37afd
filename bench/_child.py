"""Running one measured configuration in its own child process (so its peak RSS is its own)."""

from __future__ import annotations

import json
import subprocess
import sys
import time


def run_child(script: str, args: list[str], label: str) -> dict:
    """Run `script --child ARGS`; return the JSON its last stdout line reports, plus process_seconds."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["process_seconds"] = time.perf_counter() - start  # interpreter start and imports included
    return report
