"""Two arms on the tiny example: a TPO run and its direct twin, compared in one report.

Generates two manifests from `examples/tiny-cpu.yaml` at run time: `tiny-direct` (the same
everything with `thoughtPrompt: none`) and `tiny-tpo` (the example, plus
`evaluation.compareWith: tiny-direct`), runs both with one `tpo run` (the twin first: the
comparison of iteration t needs its M(t)), and copies tiny-tpo's report, which holds the
per-category win rates with intervals and the head-to-head table, to
`benchmarks/results/two_arms.md`. The seed is the snapshot `thought_budget.py` takes of
`.cache/tiny`, and the run root is the one `thought_budget.py` uses: `tiny-tpo` is its
unbudgeted run, so after either script the other reuses both runs (their DONE markers).

The default is 1 iteration (the demo runs 3); `--iterations 3` gives the demo's full run
(`results/two_arms-it3.md`).

    python benchmarks/two_arms.py [--iterations 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.setup_env()

import thought_budget as TB  # noqa: E402

RESULTS = C.ROOT / "benchmarks" / "results" / "two_arms.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=1)
    default = RESULTS.relative_to(C.ROOT)
    ap.add_argument("--out", type=Path, help=f"default {default} (-it<N> for N != 1)")
    args = ap.parse_args()
    args.out = args.out or TB.results_path(RESULTS, args.iterations)
    started, load_start = time.time(), TB.load()
    seed = TB.snapshot_seed()
    runs = {n: p for n, p, _ in TB.manifests(seed["dir"], args.iterations)}
    root = TB.run_root(seed["digest"], args.iterations)
    done = [n for n in runs if TB.finished(root, n, args.iterations)]
    # the TPO manifest first on purpose: `tpo run` orders runs by compareWith itself
    TB.run_all([runs[TB.TPO], runs[TB.TWIN]], root)
    report = (root / "default" / TB.TPO / "report.md").read_text()
    command = "python benchmarks/two_arms.py" + (
        f" --iterations {args.iterations}" if args.iterations != 1 else ""
    )
    reused = f"reused finished runs: {', '.join(done)}" if done else "both runs computed"
    head = (
        f"<!-- `{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"{(time.time() - started) / 60:.1f} min wall ({reused}), load average {load_start} "
        f"at the start and {TB.load()} at the end on a shared 2-core CPU; examples/tiny-cpu.yaml "
        f"with {args.iterations} iteration(s) (the demo runs 3), seed snapshot {seed['digest']}; "
        f"the twin is the same manifest with thoughtPrompt: none -->\n\n"
    )
    body = "\n".join(x for x in report.splitlines() if not x.startswith("![")) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(head + body)
    print(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
