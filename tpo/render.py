"""`tpo render FILE.yaml [--iteration T] [--namespace NS]`: print what the operator would create.

The PVC (when the operator creates one), the headless Service of a multi-node train, and the
Jobs of iteration T (T = 0: prepare and the seed's evaluation), built by the operator's own
builders. Owner references are omitted: they need the live TPORun's uid, which `kopf.adopt`
adds at creation time.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tpo import yamlsafe
from tpo.errors import BadInput
from tpo.spec import SpecError, parse_manifest


def render(doc: Any, iteration: int, namespace: str | None) -> list[dict[str, Any]]:
    from tpo_operator.jobs import children

    meta, spec = parse_manifest(doc)
    if not 0 <= iteration <= spec.iterations:
        raise BadInput(f"--iteration {iteration}: the run has iterations 0..{spec.iterations}")
    ns = namespace or meta.get("namespace") or "default"
    return children(spec, ns, meta["name"], iteration)


def main(args: Any) -> int:
    path = Path(args.manifest)
    from tpo.local import read_yaml

    doc = read_yaml(path)
    try:
        objs = render(doc, args.iteration, args.namespace)
    except SpecError as e:
        raise BadInput(f"{path}: invalid TPORun:\n  " + "\n  ".join(e.problems)) from None
    sys.stdout.write(yamlsafe.dump_all(objs))
    return 0
