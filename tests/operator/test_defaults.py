"""Chart-level defaults (env from the Helm values) filled into specs that leave them unset."""

from __future__ import annotations

import json

import pytest
from harness import manifest
from tpo_operator.defaults import DefaultsError, OperatorDefaults, from_env, with_defaults

from tpo.spec import parse_spec

ENV = {
    "TPO_WORKER_IMAGE": "registry.example/tpo/worker:9",
    "TPO_WORKER_PULL_POLICY": "Always",
    "TPO_DEFAULTS": json.dumps(
        {
            "storageClassName": "rwx",
            "pools": {
                "train": {"nodeSelector": {"pool": "h100"}, "queueName": "gpu"},
                "generate": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
            },
        }
    ),
}


def test_defaults_fill_what_the_spec_leaves_unset():
    raw = manifest(name="r", iterations=1)["spec"]
    raw["storage"] = {"template": {"size": "10Gi"}}
    raw["pools"] = {"train": {"gpus": 4, "queueName": "mine"}}
    spec = parse_spec(with_defaults(raw, from_env(ENV)))
    assert spec.images.worker == "registry.example/tpo/worker:9"
    assert spec.images.pull_policy == "Always"
    assert spec.storage.template.storage_class_name == "rwx"
    train = spec.pools.train
    assert train.gpus == 4 and train.queue_name == "mine"  # the user's values win
    assert train.node_selector == {"pool": "h100"}  # filled
    gen = spec.pools.generate
    assert gen.tolerations[0].key == "nvidia.com/gpu"
    assert gen.gpus == 1  # a pool the user left out keeps the spec's default GPU count
    assert raw["pools"] == {"train": {"gpus": 4, "queueName": "mine"}}  # input untouched


def test_the_spec_wins_and_no_defaults_change_nothing():
    raw = manifest(name="r", iterations=1)["spec"]
    raw["images"] = {"worker": "mine:1", "pullPolicy": "Never"}
    spec = parse_spec(with_defaults(raw, from_env(ENV)))
    assert (spec.images.worker, spec.images.pull_policy) == ("mine:1", "Never")
    assert with_defaults(raw, OperatorDefaults()) == raw
    assert with_defaults("not a mapping", from_env(ENV)) == "not a mapping"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{nope", "TPO_DEFAULTS is not JSON"),
        ("[]", "must be a JSON object"),
        ('{"pools": {"warmup": {}}}', "TPO_DEFAULTS.pools.warmup: unknown phase"),
        ('{"pools": {"train": {"gpus": 2}}}', "TPO_DEFAULTS.pools.train.gpus: not a pool default"),
    ],
)
def test_bad_operator_defaults_are_refused_with_the_key(value, message):
    with pytest.raises(DefaultsError, match=message):
        from_env({"TPO_DEFAULTS": value})


def test_the_operator_refuses_to_start_on_bad_defaults():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "tpo_operator", "-n", "x"],
        env={"TPO_DEFAULTS": "{nope", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "TPO_DEFAULTS is not JSON" in proc.stderr
