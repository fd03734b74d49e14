"""Repository-wide pytest settings.

Tests run two workers on two cores (``pytest -n 2``); one torch thread per
worker keeps them from oversubscribing the machine.
"""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
