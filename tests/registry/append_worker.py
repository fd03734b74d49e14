"""A separate process that appends to a registry (used by the concurrency test and benchmark).

Usage: ``python -m tests.registry.append_worker URL HOME WORKER COUNT GO_FILE [CHECKPOINT_EVERY]``.
Waits for ``GO_FILE`` to exist so that all workers start together, then appends
``COUNT`` records ``{"worker": W, "i": i}`` and, every ``CHECKPOINT_EVERY``
appends, a checkpoint. The passphrase comes from ``WM_PASSPHRASE``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from registry import Registry, load_owner_key

PAYLOAD_TYPE = "application/vnd.wm.test+json"


def wait_for(go: str, seconds: float = 60) -> bool:
    """Wait until the file ``go`` exists (all workers start together); False after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not Path(go).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def main(argv: list[str]) -> int:
    """Run one worker; print how many appends it made."""
    url, home, worker, count, go = argv[:5]
    every = int(argv[5]) if len(argv) > 5 else 0
    key = load_owner_key(Path(home))
    with Registry.open(url, create=False) as reg:
        if not wait_for(go):
            return 3
        for i in range(int(count)):
            reg.append(key, PAYLOAD_TYPE, {"worker": int(worker), "i": i})
            if every and (i + 1) % every == 0:
                reg.checkpoint(key)
    print(count)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
