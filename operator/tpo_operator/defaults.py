"""Cluster-wide defaults the Helm chart hands the operator, filled into specs that leave them unset.

A platform team sets the worker image, the StorageClass and per-phase GPU pools once (chart
values -> env TPO_WORKER_IMAGE / TPO_WORKER_PULL_POLICY / TPO_DEFAULTS); users' TPORuns then need
only the method settings. What a TPORun sets always wins. Defaults are filled into the raw spec
before validation, so the snapshot a run takes at its start records them: changing the chart
later never changes a running run.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PHASES = ("prepare", "generate", "judge", "train", "evaluate")
POOL_KEYS = ("nodeSelector", "tolerations", "affinity", "priorityClassName", "queueName")


class DefaultsError(ValueError):
    """The operator's configuration is wrong: it refuses to start rather than guess."""


@dataclass(frozen=True)
class OperatorDefaults:
    worker_image: str | None = None
    pull_policy: str | None = None
    storage_class_name: str | None = None
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)


def from_env(env: Mapping[str, str] = os.environ) -> OperatorDefaults:
    raw = env.get("TPO_DEFAULTS", "").strip()
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError as e:
        raise DefaultsError(f"TPO_DEFAULTS is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise DefaultsError("TPO_DEFAULTS must be a JSON object")
    pools = data.get("pools") or {}
    if not isinstance(pools, dict):
        raise DefaultsError("TPO_DEFAULTS.pools must be an object keyed by phase")
    for phase, pool in pools.items():
        if phase not in PHASES:
            raise DefaultsError(f"TPO_DEFAULTS.pools.{phase}: unknown phase; one of {PHASES}")
        if not isinstance(pool, dict):
            raise DefaultsError(f"TPO_DEFAULTS.pools.{phase} must be an object")
        for key in pool:
            if key not in POOL_KEYS:
                raise DefaultsError(
                    f"TPO_DEFAULTS.pools.{phase}.{key}: not a pool default; one of {POOL_KEYS}"
                )
    return OperatorDefaults(
        worker_image=env.get("TPO_WORKER_IMAGE") or None,
        pull_policy=env.get("TPO_WORKER_PULL_POLICY") or None,
        storage_class_name=data.get("storageClassName") or None,
        pools={k: dict(v) for k, v in pools.items() if v},
    )


def _default_gpus(phase: str) -> int:
    from tpo.spec import Pools

    return getattr(Pools(), phase).gpus


def with_defaults(raw: Any, defaults: OperatorDefaults) -> Any:
    """The raw spec with unset fields filled in; anything not a mapping is returned untouched
    (validation reports it)."""
    if not isinstance(raw, dict):
        return raw
    spec = copy.deepcopy(raw)
    images = spec.get("images")
    if images is None or isinstance(images, dict):
        images = dict(images or {})
        if defaults.worker_image and not images.get("worker"):
            images["worker"] = defaults.worker_image
        if defaults.pull_policy and not images.get("pullPolicy"):
            images["pullPolicy"] = defaults.pull_policy
        if images:
            spec["images"] = images
    storage = spec.get("storage")
    if defaults.storage_class_name and isinstance(storage, dict):
        template = storage.get("template")
        if isinstance(template, dict) and not template.get("storageClassName"):
            spec["storage"] = {
                **storage,
                "template": {**template, "storageClassName": defaults.storage_class_name},
            }
    if defaults.pools:
        pools = spec.get("pools")
        if pools is None or isinstance(pools, dict):
            pools = dict(pools or {})
            for phase, fill in defaults.pools.items():
                pool = pools.get(phase)
                if pool is not None and not isinstance(pool, dict):
                    continue
                # A pool the user left out keeps the spec's own default GPU count.
                pool = dict(pool) if pool is not None else {"gpus": _default_gpus(phase)}
                for key, value in fill.items():
                    if pool.get(key) in (None, {}, [], ""):
                        pool[key] = copy.deepcopy(value)
                pools[phase] = pool
            spec["pools"] = pools
    return spec
