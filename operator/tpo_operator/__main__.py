"""`python -m tpo_operator`: run the operator (standalone peering, liveness and metrics ports)."""

from __future__ import annotations

import argparse
import logging
import sys

import kopf


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tpo_operator", description=__doc__)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch this namespace (repeat)"
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch the cluster")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus port (-1: off)")
    p.add_argument("--liveness-port", type=int, default=8081, help="/healthz port (-1: off)")
    p.add_argument("--verbose", "-v", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    from tpo_operator import handlers
    from tpo_operator.defaults import DefaultsError, from_env

    try:
        handlers.DEFAULTS = from_env()
    except DefaultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    handlers.METRICS_PORT = args.metrics_port if args.metrics_port >= 0 else None
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port >= 0 else None
    kopf.run(
        standalone=True,
        clusterwide=args.all_namespaces or not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
