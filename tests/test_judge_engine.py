"""The local judge's engine settings (spec.judge.pairwise.dtype / maxModelLen / kvCacheGiB,
spec.judge.rewardModel.dtype): what the spec accepts, and the vLLM engine arguments the judge
builds from them (issue 16: a float32 policy was judged by a bfloat16 judge, whose context was
the model's native length against a fixed CPU KV cache). The real engine is started with these
settings in tests/test_judges.py::test_pairwise_judge_on_vllm."""

from __future__ import annotations

import pytest

from tpo import spec as S
from tpo.generate import CPU_KV_CACHE_BYTES, vllm_engine_args
from tpo.judges import judge_dtype, judge_engine
from tpo.spec import SpecError, parse_spec

GiB = 1 << 30


def spec_dict(pairwise: dict | None = None, model_dtype: str | None = None) -> dict:
    model = {"path": "/models/seed"}
    if model_dtype:
        model["dtype"] = model_dtype
    return {
        "model": model,
        "dataset": {"path": "/data/instructions.jsonl"},
        "judge": {"type": "pairwise", "pairwise": {"path": "/models/judge", **(pairwise or {})}},
    }


def judge_args(pairwise: dict, *, model_dtype: str = "auto", cpu: bool = True, env=None) -> dict:
    """The vllm.LLM keyword arguments of the judge of this spec, as judges.VllmPairwiseJudge
    builds them (judge_engine, then tpo.generate's one engine sizer)."""
    spec = parse_spec(spec_dict(pairwise, model_dtype))
    cfg = spec.judge.pairwise
    assert cfg is not None
    settings, dtype = judge_engine(cfg, spec.generation, spec.model.dtype)
    return vllm_engine_args(
        cfg.location,
        settings,
        dtype=dtype,
        cpu=cpu,
        kv_cache_bytes=cfg.kv_cache_bytes,
        env=env if env is not None else {},
    )


def test_the_judge_runs_in_the_policys_dtype_unless_it_sets_its_own():
    assert judge_args({}, model_dtype="float32")["dtype"] == "float32"
    assert judge_args({}, model_dtype="bfloat16")["dtype"] == "bfloat16"
    assert judge_args({}, model_dtype="auto")["dtype"] == "auto"
    assert judge_args({"dtype": "bfloat16"}, model_dtype="float32")["dtype"] == "bfloat16"


def test_the_reward_model_follows_the_policys_dtype_unless_it_sets_its_own():
    rm = S.RewardModelJudge(path="/rm")
    assert judge_dtype(rm, "float32") == "float32"
    assert judge_dtype(S.RewardModelJudge(path="/rm", dtype="float16"), "float32") == "float16"


def test_max_model_len_is_the_judges_own_never_the_policys():
    args = judge_args({"maxModelLen": 2048})
    assert args["max_model_len"] == 2048
    # Unset: the judge model's native length (vLLM's default), not generation.maxModelLen,
    # which sizes the policy's prompts and not a prompt holding two responses.
    spec = parse_spec({**spec_dict(), "generation": {"maxModelLen": 256}})
    assert spec.judge.pairwise is not None
    settings, _ = judge_engine(spec.judge.pairwise, spec.generation, "auto")
    assert settings.max_model_len is None
    assert "max_model_len" not in vllm_engine_args("/j", settings, cpu=True, env={})


def test_kv_cache_gib_sizes_the_judges_cache_on_cpu_and_gpu():
    assert judge_args({"kvCacheGiB": 1.5})["kv_cache_memory_bytes"] == int(1.5 * GiB)
    gpu = judge_args({"kvCacheGiB": 4}, cpu=False)
    assert gpu["kv_cache_memory_bytes"] == 4 * GiB
    assert "enable_chunked_prefill" not in gpu and gpu["gpu_memory_utilization"] == 0.9


def test_default_kv_cache_is_the_generators_on_cpu_and_vllms_on_gpu():
    """One source of truth: the judge's default is the policy engine's CPU default."""
    assert judge_args({})["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES
    assert "kv_cache_memory_bytes" not in judge_args({}, cpu=False)
    # VLLM_CPU_KVCACHE_SPACE set: vLLM reads it itself, no default of ours competes.
    env = {"VLLM_CPU_KVCACHE_SPACE": "2"}
    assert "kv_cache_memory_bytes" not in judge_args({}, env=env)


def test_pod_level_engine_settings_come_from_generation():
    spec = parse_spec(
        {**spec_dict(), "generation": {"tensorParallel": 2, "enforceEager": True, "seed": 9}}
    )
    assert spec.judge.pairwise is not None
    settings, _ = judge_engine(spec.judge.pairwise, spec.generation, "auto")
    args = vllm_engine_args("/j", settings, cpu=False, env={})
    assert args["tensor_parallel_size"] == 2 and args["enforce_eager"] is True
    assert args["seed"] == 0  # the judge seeds each call itself


@pytest.mark.parametrize(
    ("pairwise", "field", "words"),
    [
        ({"dtype": "fp8"}, "spec.judge.pairwise.dtype", "'float32'"),
        ({"maxModelLen": 8}, "spec.judge.pairwise.maxModelLen", "greater than or equal to 16"),
        ({"kvCacheGiB": 0}, "spec.judge.pairwise.kvCacheGiB", "greater than 0"),
        ({"kvCacheGiB": "lots"}, "spec.judge.pairwise.kvCacheGiB", "number"),
        (
            {"maxModelLen": 512, "maxTokens": 512},
            "spec.judge.pairwise",
            "maxModelLen (512) must exceed maxTokens (512)",
        ),
    ],
)
def test_bad_judge_engine_settings_name_the_field(pairwise, field, words):
    with pytest.raises(SpecError) as e:
        parse_spec(spec_dict(pairwise))
    assert len(e.value.problems) == 1, e.value.problems
    where, _, message = e.value.problems[0].partition(": ")
    assert where == field and words in message, e.value.problems


def test_reward_model_dtype_is_validated_by_name():
    data = spec_dict()
    data["judge"] = {"type": "rewardModel", "rewardModel": {"path": "/rm", "dtype": "int4"}}
    with pytest.raises(SpecError) as e:
        parse_spec(data)
    assert e.value.problems[0].startswith("spec.judge.rewardModel.dtype: ")


def test_judge_engine_settings_round_trip_through_the_wire_form():
    spec = parse_spec(spec_dict({"dtype": "float32", "maxModelLen": 4096, "kvCacheGiB": 2.5}))
    wire = spec.dump()["judge"]["pairwise"]
    assert (wire["dtype"], wire["maxModelLen"], wire["kvCacheGiB"]) == ("float32", 4096, 2.5)
    assert parse_spec(spec.dump()) == spec
