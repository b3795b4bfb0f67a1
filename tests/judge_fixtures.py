"""Programmatic judges for tests (importable by `tpo phase` subprocesses via PYTHONPATH=tests).

An untrained tiny model writes random text, so these score something that varies at random:
the response length. They read only the response, as every judge must.
"""

from __future__ import annotations

import os


def by_length(instruction: str, response: str, record: dict) -> float:
    return float(len(response) % 7)


def longer(instruction: str, response: str, record: dict) -> float:
    """A judge with nothing but a length bias (tests/test_length_control_eval.py): the longer
    response wins unless the two are within a few characters, where a fixed per-text jitter
    (crc32, so the same text always scores the same) decides."""
    import zlib

    return float(len(response) + zlib.crc32(response.encode()) % 12)


def crashes(instruction: str, response: str, record: dict) -> float:
    """A judge bug (not bad input): the phase must exit 1 so the Job retries."""
    if os.environ.get("TPO_TEST_JUDGE_CRASH"):
        raise RuntimeError("judge backend crashed")
    return float(len(response) % 5)


def prefers_colon(instruction: str, response: str, record: dict) -> float:
    """A hackable judge (tests/test_judge_probe.py): a colon-only or reasoning-opener reply
    outscores any real answer, the failure "One Token to Fool LLM-as-a-Judge" measured."""
    if response.strip() in (":", "Thought process:", "Let's solve this step by step."):
        return 10.0
    return 1.0
