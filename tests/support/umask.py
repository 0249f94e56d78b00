"""A fixture for tests of file modes: the usual umask, whatever the test runner's is."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """Run with umask 022, so that modes are the ones a user would see."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
