"""A separate process that spends probes (used by the atomic-spend test).

Usage: ``python -m tests.registry.spend_worker URL HOME PROBESET SEED GO_FILE``.
Waits for ``GO_FILE``, then tries to spend 40 random batches of 4 indices of
the probe set (out of 64, so workers collide), and prints the indices of the
batches it won as JSON. A refused batch (``ProbesSpentError``) spends nothing.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from registry import ProbesSpentError, Registry, load_owner_key
from tests.registry.append_worker import wait_for


def main(argv: list[str]) -> int:
    """Run one spender; print the indices it spent."""
    url, home, probeset, seed, go = argv
    key = load_owner_key(Path(home))
    rng = random.Random(int(seed))
    won: list[int] = []
    with Registry.open(url, create=False) as reg:
        if not wait_for(go):
            return 3
        for _ in range(40):
            batch = rng.sample(range(64), 4)
            try:
                reg.spend(key, int(probeset), batch, reason=f"worker {seed}")
            except ProbesSpentError:
                continue
            won += batch
    print(json.dumps(won))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
