"""Reliability and security tests (issue 9): faults, fuzzing, secrets, pod security.

They reuse the operator harness (tests/operator/harness.py) and the tiny-run builders
(tests/tinyrun.py), imported the way the operator tests import them.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for p in (TESTS / "operator", TESTS):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
