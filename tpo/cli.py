"""`tpo`: the one command line for users, Jobs and tests.

    tpo phase NAME --run-dir D --iteration T [--shard I/N]   what every Job and local step runs
    tpo run FILE.yaml [FILE.yaml ...] [--out DIR]            whole TPORuns locally
    tpo render FILE.yaml [--iteration T]                     the Jobs the operator would create
    tpo export RUN --format F [--iteration T] [--with-thought] M(t)'s outputs for a benchmark
    tpo crd                                                  the CRD generated from the spec
    tpo tiny build --out DIR                                 the offline tiny seed model + data
    tpo tiny build-judge --out DIR                           a tiny pairwise judge for it
    tpo realmodel build --out DIR                            SmolLM2 + MT-Bench, from packages

Heavy modules are imported inside each command so `tpo crd` stays instant.
"""

from __future__ import annotations

import argparse
import sys

from tpo.errors import EXIT_BAD_INPUT, BadInput


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tpo", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    ph = sub.add_parser("phase", help="run one phase of one iteration")
    ph.add_argument("name", choices=["prepare", "generate", "judge", "train", "evaluate"])
    ph.add_argument("--run-dir", required=True, help="<root>/<namespace>/<run>")
    ph.add_argument("--iteration", type=int, default=0)
    ph.add_argument(
        "--shard",
        type=_shard,
        default=None,
        help="I/N; default from JOB_COMPLETION_INDEX and TPO_SHARDS when set",
    )
    ph.add_argument("--spec", default=None, help="spec JSON to snapshot (prepare only)")

    run = sub.add_parser("run", help="run TPORun manifests locally")
    run.add_argument(
        "manifest",
        nargs="+",
        help="one or more manifests; a run named by another's evaluation.compareWith runs first",
    )
    run.add_argument("--out", default="runs", help="artifact root (default: ./runs)")
    run.add_argument("--quiet", action="store_true")

    r = sub.add_parser("render", help="print the Kubernetes objects for a TPORun")
    r.add_argument("manifest")
    r.add_argument("--iteration", type=int, default=1)
    r.add_argument("--namespace", default=None)

    from tpo.exports import FORMATS  # stdlib only: the parser stays instant

    ex = sub.add_parser("export", help="print one iteration's eval outputs in a benchmark's format")
    ex.add_argument("run", help="a run directory (<out>/<namespace>/<run>) or its --out root")
    ex.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="AlpacaEval model outputs, Arena-Hard-Auto (v2.0 or v0.1) or MT-Bench answers",
    )
    ex.add_argument("--iteration", type=int, default=None, help="default: the last evaluated")
    ex.add_argument("--with-thought", action="store_true", help="the whole generation")
    ex.add_argument(
        "--questions", action="store_true", help="the question file instead of the answers"
    )

    sub.add_parser("crd", help="print the CustomResourceDefinition")

    tiny = sub.add_parser("tiny", help="the offline tiny example")
    tsub = tiny.add_subparsers(dest="tiny_command", required=True)
    tb = tsub.add_parser("build", help="build the tiny seed model and its instructions")
    tb.add_argument("--out", required=True)
    tb.add_argument("--force", action="store_true")
    tj = tsub.add_parser("build-judge", help="build a tiny pairwise LLM judge for the tiny task")
    tj.add_argument("--out", required=True)
    tj.add_argument("--seed-dir", default=".cache/tiny", help="the tiny seed it starts from")
    tj.add_argument("--force", action="store_true")

    real = sub.add_parser("realmodel", help="a real instruction model, offline (SmolLM2-135M)")
    rsub = real.add_subparsers(dest="real_command", required=True)
    rb = rsub.add_parser("build", help="convert the packaged GGUF to a Hugging Face directory")
    rb.add_argument("--out", required=True)
    rb.add_argument("--force", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "crd":
            from tpo.crd import crd_yaml

            sys.stdout.write(crd_yaml())
            return 0
        if args.command == "phase":
            from tpo.phases import main as phase_main

            return phase_main(args)
        if args.command == "run":
            from tpo.local import main as run_main

            return run_main(args)
        if args.command == "export":
            from tpo.exports import main as export_main

            return export_main(args)
        if args.command == "render":
            from tpo.render import main as render_main

            return render_main(args)
        if args.command == "tiny" and args.tiny_command == "build-judge":
            from tpo.tiny.judge_model import main as judge_main

            return judge_main(args)
        if args.command == "realmodel":
            from tpo.realmodel import main as real_main

            return real_main(args)
        if args.command == "tiny":
            from tpo.tiny.seed import main as tiny_main

            return tiny_main(args)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # Ctrl-C outside a phase (`tpo run` handles it during phases)
        print("\ninterrupted", file=sys.stderr)
        return 130
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
