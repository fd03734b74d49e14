"""Repository-wide pytest settings.

Tests run two workers on two cores (``pytest -n 2``); one torch thread per
worker keeps them from oversubscribing the machine (the models are small, so
one thread is as fast as two even when the machine is idle).
"""

import torch

torch.set_num_threads(1)
