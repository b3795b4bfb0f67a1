"""Exit codes shared by phases, Jobs (podFailurePolicy) and the local runner.

A bad input will fail the same way on every retry, so Jobs fail fast on EXIT_BAD_INPUT;
any other non-zero exit is a crash and is retried (backoffLimit).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_BAD_INPUT = 3


class BadInput(Exception):
    """Input that no retry can fix: a malformed dataset line, a missing model, an invalid spec.

    The message names what is wrong and where (field path, file and line).
    """
