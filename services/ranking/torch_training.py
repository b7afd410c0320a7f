"""What the PyTorch trainings share (the user tower here, the encoder's fine-tuning in the
training job): the interaction they read, repeatable seeding, the learning-rate shape, memory."""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import resource
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch


class Interaction(Protocol):
    """What a training reads of an interaction (``datasets.InteractionRecord`` is one)."""

    @property
    def user_id(self) -> str: ...

    @property
    def item_id(self) -> str: ...

    @property
    def occurred_at(self) -> dt.datetime: ...


@contextlib.contextmanager
def deterministic_torch(seed: int, threads: int) -> Iterator[None]:
    """Seeds and a fixed thread count for the block; the process's settings come back after."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)


def warmup_then_linear_decay(step: int, steps: int, warmup: int) -> float:
    """The learning-rate factor: linear warm-up over ``warmup`` steps, then linear decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def peak_rss_mb() -> float:
    """This process's peak resident memory (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
