"""Fixtures for the operator tests: an emulated API server with the real operator attached."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Cluster, JobController, Operator


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh emulator with the operator running; fails the test if the operator died."""
    with Cluster(tmp_path) as c, Operator(c) as op:
        c.operator = op  # type: ignore[attr-defined]
        yield c
        assert op.alive, f"operator died: {op.error!r}"


@pytest.fixture()
def ctl(cluster: Cluster) -> JobController:
    return JobController(cluster)
