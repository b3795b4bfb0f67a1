"""Each benchmark script runs in its quick mode and prints its ratio lines, so none can rot.

The heavy runs (benchmarks/README.md) stay out of the suite; these use tiny sizes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RATIO = re.compile(r"^RATIO (.+?) = (-?[0-9.]+|nan|inf) \(target [^)]*\)", re.M)

# Hang guards, not speed limits (speed is what the scripts print): a quick run takes 10 s to
# 4 min on 2 quiet cores and several times that on a loaded CI machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def run(script: str, tmp_path: Path) -> str:
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize(
    ("script", "ratios"),
    [
        ("control_plane.py", ["N=5 handoff_p50/rtt_p50"]),
        ("judge.py", ["judge samples/s judge/bare"]),
        ("train.py", ["train steps/s phase/bare", "train peak RSS phase/bare"]),
        ("end_to_end.py", ["end_to_end non-compute share"]),
        ("generate.py", ["generate tokens/s phase/bare", "generate tokens/s phase/bare-seeded"]),
        ("pairing_real.py", ["pairing real calls tournament/round-robin"]),
    ],
)
def test_quick_mode_prints_its_ratios_last(script: str, ratios: list[str], tmp_path: Path):
    out = run(script, tmp_path)
    found = {m.group(1): float(m.group(2)) for m in RATIO.finditer(out)}
    for name in ratios:
        assert name in found, f"{script}: no RATIO line for {name!r}:\n{out[-2000:]}"
        assert found[name] > 0, f"{script}: {name} = {found[name]}"
    # the ratios come last: nothing but RATIO / TARGET lines after the first RATIO line
    tail = out[out.index("RATIO ") :].strip().splitlines()
    assert all(line.startswith(("RATIO ", "TARGET ")) for line in tail), tail
