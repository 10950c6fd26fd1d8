"""A test application that holds its task until the test opens a gate: `gate.py INPUT OUTPUT_DIR`.

The emulator runs tasks as local processes, so the task sees the test's files: it waits (at most 60 s) for the
file `open` in the directory named by GATE_DIR, then writes one output and exits 0. The status page test uses it
to see an input queued before it succeeds, whatever the machine's speed.
"""

import os
import pathlib
import sys
import time

gate = pathlib.Path(os.environ["GATE_DIR"]) / "open"
deadline = time.monotonic() + 60
while not gate.exists() and time.monotonic() < deadline:
    time.sleep(0.1)
out = pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
(out / "gated.txt").write_text(f"{pathlib.Path(sys.argv[1]).stat().st_size} bytes passed the gate\n")
print("gate opened" if gate.exists() else "gate timed out", file=sys.stderr)
sys.exit(0 if gate.exists() else 1)
