"""Test-session guards for process-wide torch state.

Several tests (and the benchmarks they call in-process) change torch's thread count. A test that
left it changed would make later in-process runs compute with another reduction order than the
child processes they are compared with bit for bit, so every test gets the count it started with.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def restore_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a whole module of tiny-model tests (``pytestmark = usefixtures("one_thread")``):
    threads only add synchronisation there, and OpenMP threads spinning on a busy 2-core machine make
    such tests 10-100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
