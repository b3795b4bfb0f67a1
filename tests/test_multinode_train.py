"""Multi-node DPO through the exact command line the operator's train Job runs.

The Job of a spec with training.nodes=2, gpusPerNode=1 and ZeRO-3 is rendered by
`tpo_operator.jobs`; its container command and env run here as two local processes, one per
"node", with JOB_COMPLETION_INDEX=0/1 as the Indexed Job sets it. Only what a cluster provides
is substituted: the rendezvous host (`<job>-0.<service>` -> 127.0.0.1), a free port (2 CPUs
are shared by parallel test runs), and the pod's mounts (/cache, the termination log) ->
temp dirs. torchrun, DeepSpeed ZeRO-3 (gloo on CPU) and TRL are real.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tpo import artifacts as A
from tpo.artifacts import RunDir
from tpo.spec import parse_spec

pytestmark = pytest.mark.timeout(900)  # hang guard: ~1 min quiet

NAMESPACE, RUN, PAIRS = "ns", "mn", 16
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spec_dict(model: Path, dataset: Path, mount: Path) -> dict:
    return {
        "model": {"path": str(model)},
        "dataset": {"path": str(dataset), "promptsPerIteration": 8, "evalPrompts": 2},
        "thoughtPrompt": {"type": "custom", "template": "Q: {instruction}\n", "separator": "a"},
        "iterations": 1,
        "generation": {"samples": 2, "maxTokens": 16, "backend": "transformers"},
        "judge": {"type": "programmatic", "programmatic": {"function": "judge_fixtures:by_length"}},
        "training": {
            "learningRate": 1e-3,
            "epochs": 1,
            "maxLength": 64,
            "perDeviceBatchSize": 2,
            "nodes": 2,
            "gpusPerNode": 1,
            "deepspeed": {"zeroStage": 3},
        },
        "storage": {"claimName": "artifacts", "mountPath": str(mount)},
        "pools": {"train": {"gpus": 0}},
    }


def prepare_run(tmp: Path, model: Path) -> tuple[dict, RunDir]:
    """A run dir as prepare + judge leave it: the real prepare phase, pairs written directly."""
    dataset = tmp / "instructions.jsonl"
    dataset.write_text(
        "".join(json.dumps({"instruction": f"add {i} and {i}"}) + "\n" for i in range(12))
    )
    spec = spec_dict(model, dataset, tmp / "artifacts")
    run = RunDir.of(tmp / "artifacts", NAMESPACE, RUN)
    argv = ["phase", "prepare", "--run-dir", str(run.path), "--iteration", "0"]
    out = subprocess.run(
        [str(VENV_BIN / "tpo"), *argv, "--spec", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    pairs = [
        {
            "prompt_id": f"p{i}",
            "prompt": f"Q: add {i} and {i}\n",
            "chosen": f"think {i} plus {i} a {2 * i}",
            "rejected": f"no idea {i} {i} {i}",
        }
        for i in range(PAIRS)
    ]
    A.write_jsonl(run.pairs(1, 0), pairs)
    A.write_done(run.done("judge", 1, 0), {"phase": "judge", "iteration": 1, "pairs": PAIRS})
    return spec, run


def node_env(container: dict, index: int, port: int, tmp: Path) -> dict[str, str]:
    """The pod's env with the cluster-provided parts replaced by local ones."""
    from tpo_operator import jobs as J

    env = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for e in container["env"]:
        assert "value" in e, f"{e['name']}: only literal env in this spec"
        env[e["name"]] = e["value"]
    assert env[J.RDZV_HOST_ENV].endswith(f"-0.{J.service_name(RUN, 1)}")
    env[J.RDZV_HOST_ENV] = "127.0.0.1"
    env[J.RDZV_PORT_ENV] = str(port)
    env["TPO_TERMINATION_LOG"] = str(tmp / f"termination-{index}")
    env["TPO_METRICS_PORT"] = "0"  # each pod has its own IP; two "nodes" on one host do not
    for name, value in list(env.items()):
        if value.startswith(J.CACHE + "/") or value == J.CACHE:
            env[name] = str(tmp / f"node-{index}" / value.lstrip("/"))
    if "TORCH_EXTENSIONS_DIR" in os.environ:  # DeepSpeed's one JIT op, built once per session
        env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
    env["JOB_COMPLETION_INDEX"] = str(index)  # what the Indexed Job sets in pod i
    env["OMP_NUM_THREADS"] = "1"  # 2 ranks on 2 shared cores
    return env


def test_two_node_zero3_train_through_the_rendered_job_command(tmp_path, tiny_lm):
    from tpo_operator import jobs as J
    from tpo_operator.reconcile import parse_summary

    spec, run = prepare_run(tmp_path, tiny_lm)
    job = J.job(parse_spec(spec), NAMESPACE, RUN, "train", 1)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[0] == "sh" and "torchrun" in command[-1] and "--nnodes 2" in command[-1]
    port = free_port()
    procs, logs = [], []
    for index in (0, 1):
        log = open(tmp_path / f"node-{index}.log", "w")  # noqa: SIM115 (closed below)
        logs.append(log)
        procs.append(
            subprocess.Popen(
                command,
                env=node_env(container, index, port, tmp_path),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        )
    deadline = time.monotonic() + 360
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    outputs = [(tmp_path / f"node-{i}.log").read_text() for i in (0, 1)]
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"node {i} exited {p.returncode}:\n{outputs[i][-4000:]}"

    # rank 0 marked the phase done; its summary is what the operator reads from pod 0
    done = A.read_done(run.done("train", 1))
    assert done is not None and done["phase"] == "train" and done["pairs"] == PAIRS
    # 16 pairs / (2 ranks x batch 2) = 4 steps: both "nodes" took part (one rank would take 8)
    assert done["steps"] == PAIRS // (2 * 2) and done["train_loss"] is not None
    message = (tmp_path / "termination-0").read_text()
    assert parse_summary(message)["model_path"] == str(run.model(1))

    # the gathered 16-bit ZeRO-3 save is a whole model that reloads and has moved
    import torch
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(str(tiny_lm)).state_dict()
    after = AutoModelForCausalLM.from_pretrained(str(run.model(1))).state_dict()
    assert before.keys() == after.keys()
    assert all(before[k].shape == after[k].shape for k in before), "partitioned (empty) weights"
    changed = [k for k in before if not torch.equal(before[k].float(), after[k].float())]
    assert len(changed) > len(before) // 2, f"only {len(changed)} tensors changed"
