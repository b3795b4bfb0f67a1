"""Exit codes shared by phases, Jobs (podFailurePolicy) and the local runner.

A bad input will fail the same way on every retry, so Jobs fail fast on EXIT_BAD_INPUT;
any other non-zero exit is a crash and is retried (backoffLimit). EXIT_UPSTREAM_DAMAGED also
fails the Job at once: an earlier phase's artifact was damaged after that phase finished, so
the earlier phase must be redone first (the operator and the local runner do so).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_BAD_INPUT = 3
EXIT_UPSTREAM_DAMAGED = 4
MAX_UPSTREAM_REDOS = 2  # redos of the damaged earlier step per later step (operator, tpo run)


class UpstreamDamaged(Exception):
    """An earlier phase's output no longer matches its DONE marker (truncated, changed, gone).

    Not bad input: redoing that phase repairs it. `phase` and `iteration` name the step to redo.
    """

    def __init__(self, phase: str, iteration: int, message: str):
        super().__init__(message)
        self.phase = phase
        self.iteration = iteration

    def record(self) -> dict:
        """What the pod leaves in its termination message for the operator (no "phase" key at
        the top: that would read as a phase summary)."""
        return {"upstream_damaged": {"phase": self.phase, "iteration": self.iteration}}


class BadInput(Exception):
    """Input that no retry can fix: a malformed dataset line, a missing model, an invalid spec.

    The message names what is wrong and where (field path, file and line).
    """
