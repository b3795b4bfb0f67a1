"""The TPORun spec: paper defaults, and one clear, field-named message per problem."""

from __future__ import annotations

import copy

import pytest

from tpo.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    SpecError,
    TPORunSpec,
    TPORunStatus,
    parse_manifest,
    parse_spec,
)

MINIMAL = {
    "model": {"path": "/models/seed"},
    "dataset": {"path": "/data/instructions.jsonl"},
    "judge": {"type": "rewardModel", "rewardModel": {"path": "/models/rm"}},
}

# Figure 2 of Wu et al. (2024), typed from the paper (curly quotes as plain quotes).
PAPER_GENERIC = (
    "Respond to the following user query in a comprehensive and detailed way. You can write "
    'down your thought process before responding. Write your thoughts after "Here is my '
    'thought process:" and write your response after "Here is my response:".\n\n'
    "User query: {instruction}"
)
PAPER_SPECIFIC = (
    "Respond to the following user query in a comprehensive and detailed way. But first write "
    "down your internal thoughts. This must include your draft response and its evaluation. "
    'After this, write your final response after "<R>".\n'
    "User query: {instruction}"
)


def spec_with(**changes) -> dict:
    """MINIMAL with changes; a key like judge__lengthControl sets a nested field."""
    s = copy.deepcopy(MINIMAL)
    for path, value in changes.items():
        node = s
        *parents, last = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return s


def problems(data) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_spec(data)
    assert str(e.value) == "; ".join(e.value.problems)
    return e.value.problems


def test_minimal_spec_gets_paper_defaults():
    s = parse_spec(MINIMAL)
    assert s.generation.samples == 8
    assert s.generation.temperature == 0.8
    assert s.generation.top_p == 0.95
    assert s.iterations == 4
    assert s.dataset.prompts_per_iteration == 5000
    assert s.training.loss_type == ["sigmoid"]
    assert s.judge.length_control.rho == 0.0
    assert s.thought_prompt.type == "generic"
    assert s.thought_prompt.resolved() == (PAPER_GENERIC, "Here is my response:")


def test_specific_and_none_prompts_verbatim():
    specific = parse_spec(spec_with(thoughtPrompt={"type": "specific"}))
    assert specific.thought_prompt.resolved() == (PAPER_SPECIFIC, "<R>")
    direct = parse_spec(spec_with(thoughtPrompt={"type": "none"}))
    assert direct.thought_prompt.resolved() == ("{instruction}", None)


def test_custom_prompt_accepted():
    s = parse_spec(
        spec_with(
            thoughtPrompt={"type": "custom", "template": "Q {instruction}", "separator": "A:"}
        )
    )
    assert s.thought_prompt.resolved() == ("Q {instruction}", "A:")


def test_round_trip_through_wire_form():
    s = parse_spec(spec_with(generation={"samples": 4, "topP": 0.9}))
    wire = s.dump()
    assert wire["generation"]["topP"] == 0.9 and "top_p" not in wire["generation"]
    assert parse_spec(wire) == s
    assert TPORunSpec.model_validate(wire) == s


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"iterations": "four"}, "spec.iterations", "integer"),
        ({"generation": {"samples": -1}}, "spec.generation.samples", "greater than or equal to 2"),
        ({"generation": {"temperature": "hot"}}, "spec.generation.temperature", "number"),
        ({"thoughtPrompt": {"type": "clever"}}, "spec.thoughtPrompt.type", "'generic'"),
        ({"judge__lengthControl": {"rho": 1.5}}, "spec.judge.lengthControl.rho", "less than"),
        ({"judge__lengthControl": {"rho": -0.1}}, "spec.judge.lengthControl.rho", "greater"),
        ({"foo": 1}, "spec.foo", "unknown field"),
        ({"generation": {"topK": 5}}, "spec.generation.topK", "unknown field"),
        (
            {"thoughtPrompt": {"type": "custom", "template": "{instruction}"}},
            "spec.thoughtPrompt",
            "separator",
        ),
        (
            {"thoughtPrompt": {"type": "custom", "template": "no slot", "separator": "#"}},
            "spec.thoughtPrompt",
            "{instruction}",
        ),
        (
            {"thoughtPrompt": {"type": "generic", "separator": "#"}},
            "spec.thoughtPrompt",
            "only for type 'custom'",
        ),
        ({"judge": {"type": "pairwise"}}, "spec.judge", "needs the 'pairwise' block"),
        (
            {"judge": {"type": "endpoint", "rewardModel": {"path": "/rm"}}},
            "spec.judge",
            "needs the 'endpoint' block",
        ),
        ({"model": {}}, "spec.model", "exactly one of 'path' or 'hubId'"),
        ({"dataset": {}}, "spec.dataset", "set exactly one of 'path' or 'hub'"),
        ({"evaluation": {"baseline": "model"}}, "spec.evaluation", "baselineModel"),
        (
            {"training": {"lossType": ["sigmoid", "sft"], "lossWeights": [1.0]}},
            "spec.training",
            "2",
        ),
        ({"storage": {"template": {"size": "lots"}}}, "spec.storage.template.size", "quantity"),
        (
            {
                "dataset__referenceField": "answer",
                "judge": {
                    "type": "pairwise",
                    "pairwise": {"path": "/j", "template": "{instruction}"},
                },
            },
            "spec",
            "judge.pairwise.template: dataset.referenceField is set but the template has no",
        ),
        (
            {"judge": {"type": "pairwise", "pairwise": {"path": "/j", "maxRepeats": 1}}},
            "spec.judge.pairwise",
            "maxRepeats needs pairing 'tournament'",
        ),
        (
            {
                "judge": {
                    "type": "pairwise",
                    "pairwise": {"path": "/j", "pairing": "tournament", "maxRepeats": 1},
                }
            },
            "spec.judge.pairwise",
            "needs temperature > 0: a greedy judge gives the same verdict again",
        ),
        (
            {
                "judge": {
                    "type": "endpoint",
                    "endpoint": {
                        "url": "https://j.example/v1",
                        "model": "j",
                        "mode": "pointwise",
                        "pairing": "tournament",
                    },
                }
            },
            "spec.judge.endpoint",
            "pairing and maxRepeats need mode 'pairwise'",
        ),
        (
            {"dataset__referenceField": "answer"},
            "spec",
            "dataset.referenceField: only pairwise (and programmatic) judges read a reference; "
            "judge is rewardModel",
        ),
        (
            {"judge": {"type": "pairwise", "pairwise": {"path": "/j", "template": "{reference}"}}},
            "spec",
            "uses {reference} but dataset.referenceField is not set",
        ),
    ],
)
def test_bad_input_one_clear_message(changes, path, words):
    got = problems(spec_with(**changes))
    assert len(got) == 1, got
    field, _, message = got[0].partition(": ")
    assert field == path, got
    assert words in message, got


def test_several_problems_each_named():
    got = problems(spec_with(iterations=0, generation={"samples": 1, "topP": 0}, extra=True))
    fields = sorted(p.partition(": ")[0] for p in got)
    assert fields == sorted(
        ["spec.iterations", "spec.generation.samples", "spec.generation.topP", "spec.extra"]
    )


def test_list_index_in_path():
    got = problems(spec_with(training={"lossType": ["sigmoid", "bogus"]}))
    assert got[0].startswith("spec.training.lossType[1]: ")


def test_not_a_mapping():
    assert problems(["model"]) == ["spec: expected an object, got list"]
    assert problems(None) == ["spec: expected an object, got NoneType"]


def test_secret_value_never_echoed():
    # A secret is a reference; a pasted token in the wrong place is rejected by name, and the
    # message names the field, not the value.
    token = "hf_SUPERSECRETTOKEN123"
    got = problems(spec_with(model={"path": "/m", "tokenSecretRef": token}))
    assert got[0].startswith("spec.model.tokenSecretRef: ")
    assert token not in got[0]


def manifest(**over) -> dict:
    doc = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": "tpo-demo", "namespace": "ml"},
        "spec": copy.deepcopy(MINIMAL),
    }
    doc.update(over)
    return doc


def test_parse_manifest_valid():
    meta, spec = parse_manifest(manifest())
    assert meta["name"] == "tpo-demo" and spec.generation.samples == 8


def test_parse_manifest_collects_every_problem():
    doc = manifest(apiVersion="tpo.dev/v1", kind="Run", metadata={"name": "Bad_Name"})
    doc["spec"]["generation"] = {"samples": 0}
    with pytest.raises(SpecError) as e:
        parse_manifest(doc)
    fields = [p.partition(": ")[0] for p in e.value.problems]
    assert fields == ["apiVersion", "kind", "metadata.name", "spec.generation.samples"]
    with pytest.raises(SpecError, match="YAML mapping"):
        parse_manifest("not a mapping")
    with pytest.raises(SpecError, match="at most 40"):
        parse_manifest(manifest(metadata={"name": "x" * 41}))


def test_status_ignores_unknown_fields_and_defaults():
    st = TPORunStatus.model_validate({"phase": "Training", "iteration": 2, "futureField": 1})
    assert st.phase == "Training" and st.iteration == 2 and st.history == []
    with pytest.raises(ValueError):
        TPORunStatus.model_validate({"phase": "Dancing"})


def test_a_partial_gpu_pool_keeps_its_gpu():
    """`pools.train: {nodeSelector: ...}` must not silently drop the phase to 0 GPUs."""
    spec = parse_spec(
        {
            **MINIMAL,
            "pools": {"train": {"nodeSelector": {"pool": "h100"}}, "judge": {"gpus": 0}},
        }
    )
    assert spec.pools.train.gpus == 1 and spec.pools.train.node_selector == {"pool": "h100"}
    assert spec.pools.judge.gpus == 0  # an explicit value stands
    assert spec.pools.prepare.gpus == 0
