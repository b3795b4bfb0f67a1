"""Kubernetes manifests for a TPORun's children: one Job per phase and iteration, the PVC, and
the headless Service of a multi-node train.

Pure builders (dicts in, dicts out, no API calls) so `tpo render` prints exactly what the
operator creates and tests validate every manifest offline. Owner references are added by the
caller (`kopf.adopt`); names are deterministic so a repeated create is a harmless 409.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from tpo.datasets_io import DATASET_TOKEN_ENV
from tpo.errors import EXIT_BAD_INPUT, EXIT_UPSTREAM_DAMAGED
from tpo.spec import Pool, TPORunSpec

APP = "tpo-operator"
LABEL_RUN = "tpo.dev/run"
LABEL_PHASE = "tpo.dev/phase"
LABEL_ITERATION = "tpo.dev/iteration"
LABEL_ATTEMPT = "tpo.dev/attempt"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
GPU = "nvidia.com/gpu"
TERMINATION_LOG = "/dev/termination-log"
CACHE = "/cache"
DATA_VOLUME = "artifacts"
MAX_NAME = 63
RDZV_PORT = 29500
RDZV_HOST_ENV = "TPO_RDZV_HOST"
RDZV_PORT_ENV = "TPO_RDZV_PORT"
VLLM_PHASES = ("generate", "evaluate")  # phases that load the policy into vLLM
POD_METRICS_PORT = 9400  # tpo.podmetrics serves live gauges here while a phase runs


def job_name(run: str, phase: str, iteration: int, attempt: int = 0) -> str:
    """`<run>-<phase>-<t>[-r<a>]`: at most 40 + 10 + 2 + 4 characters, so `<job>-<index>` (a
    pod's hostname in an Indexed Job) is still a valid DNS label.

    Attempt a > 0 is a whole-group restart of a multi-node train: a new Job beside the failed
    one, which stays for its logs (see `train_job_multinode`).
    """
    name = f"{run}-{phase}-{iteration}" + (f"-r{attempt}" if attempt else "")
    if len(name) > MAX_NAME:
        raise ValueError(f"job name {name!r} exceeds {MAX_NAME} characters")
    return name


def pvc_name(run: str) -> str:
    return f"{run}-artifacts"


def claim_name(run: str, spec: TPORunSpec) -> str:
    """The PVC every Job mounts: the user's claim, else the one the operator creates."""
    return spec.storage.claim_name or pvc_name(run)


def run_dir(spec: TPORunSpec, namespace: str, run: str) -> str:
    return f"{spec.storage.mount_path.rstrip('/')}/{namespace}/{run}"


def labels(run: str, phase: str | None = None, iteration: int | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "tpo",
        "app.kubernetes.io/instance": run,
        "app.kubernetes.io/managed-by": APP,
        LABEL_RUN: run,
    }
    if phase is not None:
        out["app.kubernetes.io/component"] = phase
        out[LABEL_PHASE] = phase
    if iteration is not None:
        out[LABEL_ITERATION] = str(iteration)
    return out


def shards_of(spec: TPORunSpec, phase: str) -> int:
    return {"generate": spec.generation.shards, "judge": spec.judge.shards}.get(phase, 1)


def gpus_of(spec: TPORunSpec, phase: str) -> int:
    """GPUs per pod: the pool's, raised to what the phase's processes need.

    vLLM with tensor parallel size N needs N GPUs in its pod; a train pod runs one process
    per GPU (`training.gpusPerNode`).
    """
    pool: Pool = getattr(spec.pools, phase)
    if phase in VLLM_PHASES:
        return max(pool.gpus, spec.generation.tensor_parallel)
    if phase == "train":
        return max(pool.gpus, spec.training.gpus_per_node)
    return pool.gpus


def multinode(spec: TPORunSpec, phase: str) -> bool:
    return phase == "train" and spec.training.nodes > 1


def pvc(spec: TPORunSpec, namespace: str, run: str) -> dict[str, Any] | None:
    """The run's PVC, or None when the user names an existing claim.

    Without `claimName` or `template`, the default template is used: phases hand artifacts to
    each other through the volume, so a run always needs one.
    """
    if spec.storage.claim_name:
        return None
    from tpo.spec import PvcTemplate

    tpl = spec.storage.template or PvcTemplate()
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": pvc_name(run), "namespace": namespace, "labels": labels(run)},
        "spec": {
            "accessModes": list(tpl.access_modes),
            "resources": {"requests": {"storage": tpl.size}},
        },
    }
    if tpl.storage_class_name:
        body["spec"]["storageClassName"] = tpl.storage_class_name
    if spec.storage.retain:
        body["metadata"]["annotations"] = {"tpo.dev/retain": "true"}
    return body


def pvc_owned(spec: TPORunSpec) -> bool:
    """A retained PVC gets no owner reference, so deleting the run never deletes it."""
    return not spec.storage.retain


def _secret_env(name: str, ref: Any) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _env(
    spec: TPORunSpec, namespace: str, run: str, phase: str, iteration: int, shards: int
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "TPO_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "TPO_NAMESPACE", "value": namespace},
        {"name": "TPO_RUN", "value": run},
        {"name": "TPO_PHASE", "value": phase},
        {"name": "TPO_ITERATION", "value": str(iteration)},
        {"name": "TPO_METRICS_PORT", "value": str(POD_METRICS_PORT)},
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": CACHE},
        {"name": "HF_HOME", "value": f"{CACHE}/huggingface"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": f"{CACHE}/inductor"},
        {"name": "TRITON_CACHE_DIR", "value": f"{CACHE}/triton"},
        {"name": "TMPDIR", "value": "/tmp"},
    ]
    if shards > 1:
        env.append({"name": "TPO_SHARDS", "value": str(shards)})
    hub_data = spec.dataset.hub if phase == "prepare" else None  # only prepare reads it
    if spec.model.path and hub_data is None:
        env += [{"name": n, "value": "1"} for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")]
    if spec.model.token_secret_ref:
        env.append(_secret_env("HF_TOKEN", spec.model.token_secret_ref))
    if hub_data is not None and hub_data.token_secret is not None:
        env.append(_secret_env(DATASET_TOKEN_ENV, hub_data.token_secret))
    endpoint = spec.judge.endpoint
    if endpoint and endpoint.api_key_secret_ref and phase in ("judge", "evaluate"):
        env.append(_secret_env("TPO_JUDGE_API_KEY", endpoint.api_key_secret_ref))
    if phase == "train":
        env.append({"name": "TORCH_EXTENSIONS_DIR", "value": f"{CACHE}/torch_extensions"})
    # The spec's env wins over a built-in of the same name (a name twice is ambiguous in k8s).
    own = {e["name"] for e in spec.env}
    return [e for e in env if e["name"] not in own] + [dict(e) for e in spec.env]


def _resources(pool: Pool, gpus: int) -> dict[str, Any]:
    requests = dict(pool.resources.requests)
    limits = dict(pool.resources.limits)
    if gpus:
        requests[GPU] = str(gpus)
        limits[GPU] = str(gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def command(
    spec: TPORunSpec, namespace: str, run: str, phase: str, iteration: int, with_spec: bool
) -> list[str]:
    """The worker's argv. Prepare carries the resolved spec so the worker snapshots it."""
    argv = ["tpo", "phase", phase, "--run-dir", run_dir(spec, namespace, run)]
    argv += ["--iteration", str(iteration)]
    if with_spec:
        argv += ["--spec", json.dumps(spec.dump(), sort_keys=True, separators=(",", ":"))]
    return argv


def _pod_spec(
    spec: TPORunSpec, namespace: str, run: str, phase: str, iteration: int, shards: int
) -> dict[str, Any]:
    pool: Pool = getattr(spec.pools, phase)
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.images.worker,
        "imagePullPolicy": spec.images.pull_policy,
        "command": command(spec, namespace, run, phase, iteration, phase == "prepare"),
        "env": _env(spec, namespace, run, phase, iteration, shards),
        "ports": [{"name": "metrics", "containerPort": POD_METRICS_PORT}],
        "securityContext": _security(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": DATA_VOLUME, "mountPath": spec.storage.mount_path},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "cache", "mountPath": CACHE},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    res = _resources(pool, gpus_of(spec, phase))
    if res:
        container["resources"] = res
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": claim_name(run, spec)}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "cache", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    if pool.node_selector:
        pod["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        pod["tolerations"] = [t.dump() for t in pool.tolerations]
    if pool.affinity:
        pod["affinity"] = pool.affinity
    if pool.priority_class_name:
        pod["priorityClassName"] = pool.priority_class_name
    if spec.images.pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in spec.images.pull_secrets]
    return pod


def _failure_policy(group: bool = False) -> dict[str, Any]:
    """Preemption is not the worker's fault; bad input fails the same way on every retry, and
    so does a damaged upstream artifact until the operator has redone that phase.

    A multi-node train (`group`) also fails the whole Job on any other crash: one lost rank
    stalls every other rank's collectives, so the operator restarts the group as a new Job
    instead of letting the Job controller replace a single pod.
    """
    rules: list[dict[str, Any]] = [
        {
            "action": "Ignore",
            "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
        },
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": "worker",
                "operator": "In",
                "values": [EXIT_BAD_INPUT, EXIT_UPSTREAM_DAMAGED],
            },
        },
    ]
    if group:
        rules.append(
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "worker", "operator": "NotIn", "values": [0]},
            }
        )
    return {"rules": rules}


COMPARE_VOLUME = "compare-artifacts"
COMPARE_MOUNT = "/compare"
COMPARE_DIR_ENV = "TPO_COMPARE_RUN_DIR"  # tpo.phases.COMPARE_DIR_ENV


def _with_compare(
    pod: dict[str, Any], spec: TPORunSpec, namespace: str, run: str, claim: str | None
) -> None:
    """An evaluate pod of a run with `evaluation.compareWith` reads the other run's M(t).

    Same PVC (a shared claimName): it is already mounted, at `<mount>/<ns>/<other>`. Another
    PVC (each run created its own): mounted read-only at /compare; the other run's directory is
    `<ns>/<other>` on it, whatever mount path that run's own pods use.
    """
    other = spec.evaluation.compare_with
    if not other:
        return
    container = pod["containers"][0]
    if claim is None or claim == claim_name(run, spec):
        path = f"{spec.storage.mount_path.rstrip('/')}/{namespace}/{other}"
    else:
        pod["volumes"].append(
            {
                "name": COMPARE_VOLUME,
                "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
            }
        )
        container["volumeMounts"].append(
            {"name": COMPARE_VOLUME, "mountPath": COMPARE_MOUNT, "readOnly": True}
        )
        path = f"{COMPARE_MOUNT}/{namespace}/{other}"
    env = [e for e in container["env"] if e["name"] != COMPARE_DIR_ENV]
    container["env"] = [*env, {"name": COMPARE_DIR_ENV, "value": path}]


def job(
    spec: TPORunSpec,
    namespace: str,
    run: str,
    phase: str,
    iteration: int,
    attempt: int = 0,
    compare_claim: str | None = None,
) -> dict[str, Any]:
    """The Job of one phase of one iteration (an Indexed Job when the phase is sharded).

    `compare_claim`: the PVC of the `evaluation.compareWith` run (evaluate only; None: ours).
    """
    if multinode(spec, phase):
        return train_job_multinode(spec, namespace, run, iteration, attempt)
    shards = shards_of(spec, phase)
    pod = _pod_spec(spec, namespace, run, phase, iteration, shards)
    if phase == "evaluate" and iteration > 0:
        _with_compare(pod, spec, namespace, run, compare_claim)
    if phase == "train" and spec.training.gpus_per_node > 1:
        pod["containers"][0]["command"] = _torchrun(
            spec, namespace, run, iteration, ["--standalone"]
        )
    return _job(spec, namespace, run, phase, iteration, shards, pod, attempt)


def _job(
    spec: TPORunSpec,
    namespace: str,
    run: str,
    phase: str,
    iteration: int,
    pods: int,
    pod: dict[str, Any],
    attempt: int = 0,
) -> dict[str, Any]:
    pool: Pool = getattr(spec.pools, phase)
    pod_labels = {**labels(run, phase, iteration), LABEL_ATTEMPT: str(attempt)}
    meta_labels = dict(pod_labels)
    if pool.queue_name:
        meta_labels[KUEUE_QUEUE] = pool.queue_name
    group = multinode(spec, phase)
    body: dict[str, Any] = {
        "backoffLimit": 0 if group else pool.backoff_limit,
        "podFailurePolicy": _failure_policy(group),
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(POD_METRICS_PORT),
                },
            },
            "spec": pod,
        },
    }
    if pods > 1:
        body.update(completionMode="Indexed", completions=pods, parallelism=pods)
    if pool.active_deadline_seconds:
        body["activeDeadlineSeconds"] = pool.active_deadline_seconds
    if pool.queue_name:
        body["suspend"] = True  # Kueue admits (unsuspends) it; the operator never does
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(run, phase, iteration, attempt),
            "namespace": namespace,
            "labels": meta_labels,
        },
        "spec": body,
    }


def service_name(run: str, iteration: int) -> str:
    return job_name(run, "train", iteration)


def train_service(spec: TPORunSpec, namespace: str, run: str, iteration: int) -> dict[str, Any]:
    """Headless Service giving each train pod a stable DNS name for the torchrun rendezvous.

    One Service serves every attempt of the iteration's train: its selector leaves the attempt
    out, and pods of a failed attempt are terminal, so they are no endpoints.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(run, iteration),
            "namespace": namespace,
            "labels": labels(run, "train", iteration),
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_RUN: run, LABEL_PHASE: "train", LABEL_ITERATION: str(iteration)},
            "ports": [{"name": "rendezvous", "port": RDZV_PORT, "targetPort": RDZV_PORT}],
        },
    }


def _torchrun(
    spec: TPORunSpec, namespace: str, run: str, iteration: int, rendezvous: list[str]
) -> list[str]:
    """`sh -c 'exec torchrun ... -m tpo.cli phase train ...'`: the shell expands the pod's env."""
    inner = shlex.join(command(spec, namespace, run, "train", iteration, False)[1:])
    per_node = max(spec.training.gpus_per_node, 1)
    args = [f"--nnodes {spec.training.nodes}", f"--nproc-per-node {per_node}", *rendezvous]
    return ["sh", "-c", f"exec torchrun {' '.join(args)} --max-restarts 0 -m tpo.cli {inner}"]


def train_job_multinode(
    spec: TPORunSpec, namespace: str, run: str, iteration: int, attempt: int = 0
) -> dict[str, Any]:
    """Multi-node DPO: an Indexed Job, pod i is torchrun node i, pod 0 the rendezvous host.

    Static rendezvous (`--master-addr <job>-0.<service>`): ranks are the completion indexes, so
    a node's rank never changes. The host and port come from the pod's env, so the exact
    command can run outside a cluster with another host. All-or-nothing: the Job fails on any
    pod failure (`_failure_policy(group=True)`, backoffLimit 0; the Job controller then stops
    the other pods) and the operator creates the next attempt; a preempted pod is ignored here
    and its peers' failure restarts the group without using the retry budget.
    """
    name = job_name(run, "train", iteration, attempt)
    svc = service_name(run, iteration)
    pod = _pod_spec(spec, namespace, run, "train", iteration, 1)
    pod["subdomain"] = svc
    container = pod["containers"][0]
    container["env"] += [
        {"name": RDZV_HOST_ENV, "value": f"{name}-0.{svc}"},
        {"name": RDZV_PORT_ENV, "value": str(RDZV_PORT)},
    ]
    container["ports"] = [*container["ports"], {"name": "rendezvous", "containerPort": RDZV_PORT}]
    container["command"] = _torchrun(
        spec,
        namespace,
        run,
        iteration,
        [
            '--node-rank "$JOB_COMPLETION_INDEX"',
            f'--master-addr "${RDZV_HOST_ENV}"',
            f'--master-port "${RDZV_PORT_ENV}"',
        ],
    )
    affinity = dict(pod.get("affinity") or {})  # a copy: never write into the spec's dict
    affinity.setdefault("podAntiAffinity", _spread(run, iteration, attempt))
    pod["affinity"] = affinity
    return _job(spec, namespace, run, "train", iteration, spec.training.nodes, pod, attempt)


def _spread(run: str, iteration: int, attempt: int) -> dict[str, Any]:
    """One train pod per node (preferred: a GPU request of a whole node enforces it anyway)."""
    selector = {**labels(run, "train", iteration), LABEL_ATTEMPT: str(attempt)}
    return {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "podAffinityTerm": {
                    "labelSelector": {"matchLabels": selector},
                    "topologyKey": "kubernetes.io/hostname",
                },
            }
        ]
    }


def children(spec: TPORunSpec, namespace: str, run: str, iteration: int) -> list[dict[str, Any]]:
    """Everything the operator creates for iteration t (t = 0: prepare and the seed's eval)."""
    out: list[dict[str, Any]] = []
    claim = pvc(spec, namespace, run)
    if claim:
        out.append(claim)
    phases = ["prepare", "evaluate"] if iteration == 0 else ["generate", "judge", "train"]
    phases += [] if iteration == 0 else ["evaluate"]
    for phase in phases:
        if multinode(spec, phase):
            out.append(train_service(spec, namespace, run, iteration))
        out.append(job(spec, namespace, run, phase, iteration))
    return out
