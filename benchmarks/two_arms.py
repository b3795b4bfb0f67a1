"""Two arms on the tiny example: a TPO run and its direct twin, compared in one report.

Generates two manifests from `examples/tiny-cpu.yaml` at run time: `tiny-direct` (the same
everything with `thoughtPrompt: none`) and `tiny-tpo` (the example, plus
`evaluation.compareWith: tiny-direct`), runs both with one `tpo run` (the twin first: the
comparison of iteration t needs its M(t)), and copies tiny-tpo's report, which holds the
per-category win rates with intervals and the head-to-head table, to
`benchmarks/results/two_arms.md`. The seed is the snapshot `thought_budget.py` takes of
`.cache/tiny`.

    python benchmarks/two_arms.py [--iterations 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.setup_env()

import yaml  # noqa: E402
from thought_budget import EXAMPLE, WORK, snapshot_seed  # noqa: E402

RESULTS = C.ROOT / "benchmarks" / "results" / "two_arms.md"


def manifests(seed: Path, iterations: int) -> list[Path]:
    base = yaml.safe_load(EXAMPLE.read_text())
    base["spec"]["model"]["path"] = str(seed / "model")
    base["spec"]["dataset"]["path"] = str(seed / "instructions.jsonl")
    base["spec"]["iterations"] = iterations
    out = []
    for name in ("tiny-direct", "tiny-tpo"):
        doc = json.loads(json.dumps(base))
        doc["metadata"] = {"name": name}
        if name == "tiny-direct":
            doc["spec"]["thoughtPrompt"] = {"type": "none"}
        else:
            doc["spec"]["evaluation"]["compareWith"] = "tiny-direct"
        path = WORK / "manifests" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=1)
    args = ap.parse_args()
    started = time.time()
    seed = snapshot_seed()
    paths = manifests(seed["dir"], args.iterations)
    root = WORK / "two-arms" / seed["digest"]
    # the TPO manifest first on purpose: `tpo run` orders runs by compareWith itself
    cmd = [sys.executable, "-m", "tpo.cli", "run", str(paths[1]), str(paths[0]), "--out", str(root)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    report = (root / "default" / "tiny-tpo" / "report.md").read_text()
    head = (
        f"<!-- `python benchmarks/two_arms.py --iterations {args.iterations}`, "
        f"{time.strftime('%Y-%m-%d')}, {(time.time() - started) / 60:.0f} min on a shared 2-core "
        f"CPU; examples/tiny-cpu.yaml with {args.iterations} iteration(s) (the demo runs 3), "
        f"seed snapshot {seed['digest']}; the twin is the same manifest with "
        f"thoughtPrompt: none -->\n\n"
    )
    body = "\n".join(x for x in report.splitlines() if not x.startswith("![")) + "\n"
    RESULTS.write_text(head + body)
    print(report)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
