"""Judges: a reward model, a pairwise LLM judge (local vLLM or an OpenAI-compatible endpoint),
a pointwise endpoint judge and a programmatic one.

Every judge sees the RESPONSE only, never the thought (the paper's point: thoughts are optimised
indirectly, through the responses they lead to). A sample that failed to parse has no response
(`JudgeItem.response is None`) and is never sent to a judge; its score is None.

Pairwise judges judge all pairs of a prompt's samples (both orders against position bias) and
turn the battles into pointwise scores by Bradley-Terry maximum likelihood on the ELO scale.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Protocol

from tpo import progress
from tpo import spec as S
from tpo.errors import BadInput

log = logging.getLogger(__name__)

API_KEY_ENV = "TPO_JUDGE_API_KEY"

# In the spirit of MT-Bench's pairwise prompt and the Self-Taught Evaluator.
DEFAULT_PAIRWISE_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two "
    "AI assistants to the user question displayed below. Choose the assistant that follows the "
    "user's instructions and answers the user's question better: consider helpfulness, "
    "relevance, accuracy, depth, creativity and level of detail. Do not let the order in which "
    "the responses were presented, their length or the assistants' names influence your "
    "evaluation. Be as objective as possible. Briefly explain your evaluation, then end with "
    'your verdict in exactly this format: "[[A]]" if assistant A is better, "[[B]]" if '
    'assistant B is better, and "[[C]]" for a tie.\n\n'
    "[User Question]\n{instruction}\n\n"
    "[The Start of Assistant A's Answer]\n{response_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{response_b}\n[The End of Assistant B's Answer]"
)

# MT-Bench's reference-guided pairwise prompt (pair-math-v1), for dataset.referenceField.
DEFAULT_REFERENCE_PAIRWISE_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two "
    "AI assistants to the user question displayed below. Your evaluation should consider "
    "correctness and helpfulness. You will be given a reference answer, assistant A's answer, "
    "and assistant B's answer. Your job is to evaluate which assistant's answer is better. "
    "Begin your evaluation by comparing both assistants' answers with the reference answer. "
    "Identify and correct any mistakes. Do not let the order in which the responses were "
    "presented, their length or the assistants' names influence your evaluation. Be as "
    "objective as possible. Briefly explain your evaluation, then end with your verdict in "
    'exactly this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, '
    'and "[[C]]" for a tie.\n\n'
    "[User Question]\n{instruction}\n\n"
    "[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"
    "[The Start of Assistant A's Answer]\n{response_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{response_b}\n[The End of Assistant B's Answer]"
)

DEFAULT_POINTWISE_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an "
    "AI assistant to the user question displayed below. Consider helpfulness, relevance, "
    "accuracy, depth, creativity and level of detail. Be as objective as possible. Briefly "
    "explain your evaluation, then rate the response on a scale of 1 to 10 by ending with "
    'exactly this format: "Rating: [[5]]".\n\n'
    "[User Question]\n{instruction}\n\n"
    "[The Start of Assistant's Answer]\n{response}\n[The End of Assistant's Answer]"
)

_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_OUTCOME = {"A": 1.0, "B": 0.0, "C": 0.5}
_NUM = r"(\d+(?:\.\d+)?)"
# The phrasings a judge uses when it does not write "[[A]]" (tests/test_judges_real.py). Each
# names one side unambiguously; a sentence that merely mentions an assistant
# ("[The End of Assistant B's Answer]") matches none of them.
_LOOSE_VERDICTS = [
    re.compile(r"(?<![\[\w])\[\s*([ABC])\s*\](?![\]\w])"),  # [A]
    # The side's letter is matched in capitals only: "my verdict is a tie" names no side A.
    re.compile(r"\bverdict\s*(?:is)?\s*[:=]?\s*\**\s*(?:assistant\s+)?((?-i:[ABC]))\b", re.I),
    re.compile(
        r"\b(?:assistant|response|answer)\s+((?-i:[AB]))(?:'s\s+(?:answer|response))?\s+is\s+"
        r"(?:clearly\s+|slightly\s+|much\s+)?(?:the\s+)?better\b",
        re.I,
    ),
    re.compile(
        r"\b(?:it(?:'s|\s+is)\s+a\s+tie|verdict\s*(?:is)?\s*[:=]?\s*(?:a\s+)?tie)\b()", re.I
    ),
]
_LOOSE_RATINGS = [
    re.compile(rf"\b(?:rating|score)\s*[:=]\s*\**\s*{_NUM}(?:\s*(?:/|out\s+of)\s*(\d+))?", re.I),
    re.compile(rf"(?<![\w.]){_NUM}\s*(?:/|out\s+of)\s*(\d+)\b", re.I),
]


@dataclass(frozen=True)
class JudgeItem:
    instruction: str
    response: str | None
    record: dict = field(default_factory=dict)


class Judge(Protocol):
    battles: list[dict]

    def score_groups(self, groups: Sequence[Sequence[JudgeItem]]) -> list[list[float | None]]: ...

    def compare(self, pairs: Sequence[tuple[JudgeItem, JudgeItem]]) -> list[float | None]: ...

    def close(self) -> None: ...


class JudgeUnavailable(RuntimeError):
    """The judge service could not be reached after retries: a crash, so the Job retries."""


# --------------------------------------------------------------------------- pure parsing


def parse_verdict(text: str | None) -> float | None:
    """The judge's verdict: 1.0 A, 0.0 B, 0.5 tie, None unread.

    The format the template asks for, `[[A]]`/`[[B]]`/`[[C]]`, comes first, and its LAST
    marker wins (a judge may quote the format before it decides, as MT-Bench's judges do).
    Without one, the common phrasings are read: `[A]`, `Verdict: B` (also `Final verdict:
    Assistant B`), `Assistant A is better` (`Assistant A's answer is better`, `Response B is
    the better`), `It's a tie` / `Verdict: tie`. If those name different outcomes the reply
    contradicts itself and is unread: no guess, the caller counts it.
    """
    if not text:
        return None
    found = _VERDICT.findall(text)
    if found:
        return _OUTCOME[found[-1]]
    loose = {(m.group(1) or "C").upper() for p in _LOOSE_VERDICTS for m in p.finditer(text)}
    return _OUTCOME[loose.pop()] if len(loose) == 1 else None


def parse_rating(text: str | None, low: float = 1.0, high: float = 10.0) -> float | None:
    """The judge's rating on the scale low..high, or None unread.

    `[[5]]` (the template's `Rating: [[5]]`) first, its last marker winning; else `Rating: 5`,
    `Score: 5`, `5/10`, `5 out of 10`, `Rating: 5/10`. A stated scale must be `high` (`4/5`
    is not a 4 out of 10); different values in one reply contradict each other: unread.
    """
    if not text:
        return None
    found = _RATING.findall(text)
    if found:
        value = float(found[-1])
        return value if low <= value <= high else None
    values = set()
    for p in _LOOSE_RATINGS:
        for m in p.finditer(text):
            scale = m.group(2)
            if scale is not None and float(scale) != high:
                continue
            values.add(float(m.group(1)))
    if len(values) != 1:
        return None
    value = values.pop()
    return value if low <= value <= high else None


def pairwise_prompt(
    template: str, instruction: str, a: str, b: str, reference: str | None = None
) -> str:
    # replace, not format: responses and instructions may hold braces. The reference goes in
    # first, so a response that quotes "{reference}" is shown as written.
    if reference is not None:
        template = template.replace("{reference}", reference)
    return (
        template.replace("{instruction}", instruction)
        .replace("{response_a}", a)
        .replace("{response_b}", b)
    )


def reference_of(item: JudgeItem, field_name: str | None) -> str | None:
    """The record's reference answer (prepare checked that every row has one); the field is
    a dotted path, as everywhere in spec.dataset (tpo.datasets_io.get_path)."""
    from tpo.datasets_io import MISSING, get_path

    if not field_name:
        return None
    value = get_path(item.record, field_name)
    if value is None or value is MISSING:
        raise BadInput(
            f"dataset.referenceField {field_name!r}: missing in the record of {item.instruction!r}"
        )
    return str(value)


def pointwise_prompt(instruction: str, response: str) -> str:
    return DEFAULT_POINTWISE_TEMPLATE.replace("{instruction}", instruction).replace(
        "{response}", response
    )


def outcome_for_first(first: float | None, swapped: float | None) -> float | None:
    """Average the two orders of one pair (swapped is from the second item's side)."""
    votes = [v for v in (first, None if swapped is None else 1.0 - swapped) if v is not None]
    return sum(votes) / len(votes) if votes else None


def compare_scores(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return 1.0 if a > b else 0.0 if a < b else 0.5


# --------------------------------------------------------------------------- pointwise base


class PointwiseJudge:
    """Scores each scorable response on its own; subclasses score a flat batch."""

    def __init__(self) -> None:
        self.battles: list[dict] = []

    def score_items(self, items: Sequence[JudgeItem]) -> list[float | None]:
        raise NotImplementedError

    def _score_scorable(self, items: Sequence[JudgeItem]) -> list[float | None]:
        idx = [i for i, it in enumerate(items) if it.response is not None]
        out: list[float | None] = [None] * len(items)
        if idx:
            for i, s in zip(idx, self.score_items([items[i] for i in idx]), strict=True):
                out[i] = s
        return out

    def score_groups(self, groups: Sequence[Sequence[JudgeItem]]) -> list[list[float | None]]:
        flat = [it for g in groups for it in g]
        scores = self._score_scorable(flat)
        out, pos = [], 0
        for g in groups:
            out.append(scores[pos : pos + len(g)])
            pos += len(g)
        return out

    def compare(self, pairs: Sequence[tuple[JudgeItem, JudgeItem]]) -> list[float | None]:
        scores = self._score_scorable([it for p in pairs for it in p])
        return [compare_scores(scores[2 * i], scores[2 * i + 1]) for i in range(len(pairs))]

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- reward model


def reward_text(tokenizer: Any, item: JudgeItem) -> str:
    """The conversation the reward model reads: the instruction and the response, nothing else."""
    assert item.response is not None
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [
                {"role": "user", "content": item.instruction},
                {"role": "assistant", "content": item.response},
            ],
            tokenize=False,
        )
    return f"{item.instruction}\n\n{item.response}"


class RewardModelJudge(PointwiseJudge):
    """A sequence classifier with one output (ArmoRM-style): one load per phase, batched."""

    def __init__(self, cfg: S.RewardModelJudge, policy_dtype: str = "auto"):
        super().__init__()
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        loc = model_location(cfg, "spec.judge.rewardModel")
        self.cfg = cfg
        remote = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        self.tokenizer = AutoTokenizer.from_pretrained(loc, **remote)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = judge_dtype(cfg, policy_dtype)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            loc, dtype=dtype if dtype == "auto" else getattr(torch, dtype), **remote
        )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        self.sent: list[str] = []  # the texts of the last call, for audits and tests

    def score_items(self, items: Sequence[JudgeItem]) -> list[float | None]:
        import torch

        texts = [reward_text(self.tokenizer, it) for it in items]
        self.sent = texts
        out: list[float | None] = []
        bs = self.cfg.batch_size
        counter = progress.current()  # the judge phase's Progress: one unit per response
        counter.expect(len(texts))
        for start in range(0, len(texts), bs):
            enc = self.tokenizer(
                texts[start : start + bs],
                add_special_tokens=False,
                truncation=True,
                max_length=self.cfg.max_length,
                padding=True,
                return_tensors="pt",
            ).to(self.model.device)
            with torch.no_grad():
                res = self.model(**enc)
            score = getattr(res, "score", None)
            logits = (score if score is not None else res.logits).float()
            out.extend(float(x) for x in logits.reshape(logits.shape[0], -1)[:, 0])
            counter.advance(logits.shape[0])
        return out

    def close(self) -> None:
        self.model = None


# --------------------------------------------------------------------------- pairwise core


Complete = Callable[[Sequence[str]], list[str | None]]


class PairwiseCore:
    """All pairs of each group (both orders) in ONE batch of judge calls, then ELO per group.

    `complete` turns judge prompts into judge replies (None = error); it is the only part that
    differs between a local vLLM judge and a hosted endpoint.
    """

    def __init__(
        self,
        complete: Complete,
        *,
        template: str | None,
        both_orders: bool = True,
        pairing: str = "round-robin",
        reference_field: str | None = None,
        max_repeats: int = 0,
    ):
        self.complete = complete
        default = (
            DEFAULT_REFERENCE_PAIRWISE_TEMPLATE if reference_field else DEFAULT_PAIRWISE_TEMPLATE
        )
        self.template = template or default
        self.reference_field = reference_field
        self.max_repeats = max_repeats
        self.both_orders = both_orders
        self.pairing = pairing
        self.battles: list[dict] = []
        self.unparsed = 0  # replies without a verdict, over this judge's life
        self.errors = 0  # calls that returned nothing

    def _verdicts(self, jobs: Sequence[tuple[JudgeItem, JudgeItem]]) -> list[float | None]:
        prompts = [
            pairwise_prompt(
                self.template,
                a.instruction,
                a.response or "",
                b.response or "",
                reference_of(a, self.reference_field),
            )
            for a, b in jobs
        ]
        replies = self.complete(prompts) if prompts else []
        out = []
        for r in replies:
            v = parse_verdict(r)
            self.errors += r is None
            self.unparsed += r is not None and v is None
            out.append(v)
        return out

    def _orders(self, i: int, j: int) -> list[tuple[int, int]]:
        return [(i, j), (j, i)] if self.both_orders else [(i, j)]

    def score_groups(self, groups: Sequence[Sequence[JudgeItem]]) -> list[list[float | None]]:
        if self.pairing == "tournament":
            return self._tournament(groups)
        jobs: list[tuple[int, int, int]] = []  # (group, shown as A, shown as B)
        for g, items in enumerate(groups):
            ok = [k for k, it in enumerate(items) if it.response is not None]
            for i, j in combinations(ok, 2):
                jobs.extend((g, a, b) for a, b in self._orders(i, j))
        verdicts = self._verdicts([(groups[g][a], groups[g][b]) for g, a, b in jobs])
        self.battles = [
            {"prompt": g, "a": a, "b": b, "outcome": v}
            for (g, a, b), v in zip(jobs, verdicts, strict=True)
        ]
        by_group: dict[int, list[dict]] = {}
        for b in self.battles:
            by_group.setdefault(b["prompt"], []).append(b)
        return [elo_scores(items, by_group.get(g, [])) for g, items in enumerate(groups)]

    def _tournament(self, groups: Sequence[Sequence[JudgeItem]]) -> list[list[float | None]]:
        """Min/max brackets (tpo.tournament): ~3K/2 matches instead of K(K-1)/2, one batch per
        round across all prompts. A level match is replayed `max_repeats` times: only a judge
        that samples (temperature > 0) can give it a different verdict."""
        from tpo.tournament import MinMaxTournament, run_tournaments

        tours = [
            MinMaxTournament(
                len(g),
                both_orders=self.both_orders,
                max_repeats=self.max_repeats,
                valid=[it.response is not None for it in g],
            )
            for g in groups
        ]

        def judge_batch(jobs: list[tuple[int, int, int]]) -> list[float | None]:
            return self._verdicts([(groups[t][a], groups[t][b]) for t, a, b in jobs])

        run_tournaments(tours, judge_batch)
        self.battles = [{"prompt": t, **b} for t, tour in enumerate(tours) for b in tour.battles]
        return [tour.scores() for tour in tours]

    def compare(self, pairs: Sequence[tuple[JudgeItem, JudgeItem]]) -> list[float | None]:
        jobs = [(a, b) for a, b in pairs]
        if self.both_orders:
            jobs += [(b, a) for a, b in pairs]
        v = self._verdicts(jobs)
        n = len(pairs)
        if not self.both_orders:
            return v
        return [outcome_for_first(v[i], v[n + i]) for i in range(n)]


def elo_scores(items: Sequence[JudgeItem], battles: Sequence[dict]) -> list[float | None]:
    """Bradley-Terry (ELO scale) over one group's judged battles.

    A sample with no decided battle cannot be placed: None. A lone scorable sample (the others
    failed to parse) has nothing to lose to: it scores 0.0 so it can still be chosen.
    """
    from tpo.scoring import Battle, bradley_terry

    ok = [k for k, it in enumerate(items) if it.response is not None]
    out: list[float | None] = [None] * len(items)
    if len(ok) == 1:
        out[ok[0]] = 0.0
        return out
    decided = [b for b in battles if b["outcome"] is not None]
    placed = sorted({b["a"] for b in decided} | {b["b"] for b in decided})
    if not placed:
        return out
    local = {k: i for i, k in enumerate(placed)}
    ratings = bradley_terry(
        len(placed), [Battle(local[b["a"]], local[b["b"]], b["outcome"]) for b in decided]
    )
    for k, r in zip(placed, ratings, strict=True):
        out[k] = float(r)
    return out


# --------------------------------------------------------------------------- local vLLM judge


def judge_dtype(cfg: S.PairwiseJudge | S.RewardModelJudge, policy_dtype: str) -> str:
    """The judge's own dtype, else the policy's (spec.model.dtype)."""
    return cfg.dtype or policy_dtype


def judge_engine(
    cfg: S.PairwiseJudge, engine: S.Generation | None, policy_dtype: str
) -> tuple[S.Generation, str]:
    """(engine settings, dtype) of the local vLLM judge. Pod-level settings (tensor parallel,
    eager, memory share) come from the run's `engine` (the judge shares the pod's devices);
    the context length is the judge's maxModelLen, else the judge model's own (never the
    policy's: a judge prompt holds two responses); the seed is fixed (calls seed themselves).
    The KV cache is `cfg.kv_cache_bytes`, passed beside these to tpo.generate."""
    e = engine or S.Generation()
    update = {"backend": "vllm", "max_model_len": cfg.max_model_len, "seed": 0}
    return e.model_copy(update=update), judge_dtype(cfg, policy_dtype)


class VllmPairwiseJudge:
    """The pairwise judge on a local vLLM engine (greedy verdicts unless `temperature`)."""

    def __init__(
        self,
        cfg: S.PairwiseJudge,
        generator: Any | None = None,
        engine: S.Generation | None = None,
        reference_field: str | None = None,
        policy_dtype: str = "auto",
    ):
        self.cfg = cfg
        self.generator = generator or self._load(cfg, engine, policy_dtype)
        self.core = PairwiseCore(
            self._complete,
            template=cfg.template,
            both_orders=cfg.both_orders,
            pairing=cfg.pairing,
            reference_field=reference_field,
            max_repeats=cfg.max_repeats,
        )
        self._sent = 0  # prompts sent so far: the next batch's seed, so no draw repeats

    @staticmethod
    def _load(cfg: S.PairwiseJudge, engine: S.Generation | None, policy_dtype: str) -> Any:
        from tpo.generate import load_generator

        loc = model_location(cfg, "spec.judge.pairwise")
        settings, dtype = judge_engine(cfg, engine, policy_dtype)
        return load_generator(loc, settings, dtype=dtype, kv_cache_bytes=cfg.kv_cache_bytes)

    @property
    def battles(self) -> list[dict]:
        return self.core.battles

    def _complete(self, prompts: Sequence[str]) -> list[str | None]:
        """Prompts longer than the judge's context are errors (None), not a failed batch."""
        limit = getattr(self.generator, "max_model_len", None)
        lens = self.generator.count_tokens(prompts)
        fits = [i for i, n in enumerate(lens) if not limit or n + self.cfg.max_tokens <= limit]
        outs = self.generator.generate(
            [prompts[i] for i in fits],
            n=1,
            temperature=self.cfg.temperature,
            top_p=1.0,
            max_tokens=self.cfg.max_tokens,
            seed=self._sent,  # prompt i of this batch samples with seed _sent + i
        )
        self._sent += len(fits)
        replies: list[str | None] = [None] * len(prompts)
        for i, o in zip(fits, outs, strict=True):
            replies[i] = o[0].text
        return replies

    def score_groups(self, groups: Sequence[Sequence[JudgeItem]]) -> list[list[float | None]]:
        return self.core.score_groups(groups)

    def compare(self, pairs: Sequence[tuple[JudgeItem, JudgeItem]]) -> list[float | None]:
        return self.core.compare(pairs)

    def close(self) -> None:
        self.generator.close()


# --------------------------------------------------------------------------- endpoint judge


class ChatEndpoint:
    """OpenAI-compatible /chat/completions with bounded concurrency, timeouts and retries.

    Transient failures (connection errors, timeouts, 429, 5xx) are retried with exponential
    backoff; if they persist the endpoint is down and JudgeUnavailable is raised (exit 1: the
    Job retries, since an outage passes, whereas failing the run for good would lose it).
    400/413/422 concern one request (e.g. too long): that sample is unscored (None). 401, 403,
    404 and other 4xx are configuration errors no retry can fix: BadInput. The API key is sent in a
    header only and never appears in a message or log.
    """

    backoff_seconds = 0.5
    backoff_cap = 30.0

    def __init__(self, cfg: S.EndpointJudge, api_key: str | None, *, max_tokens: int = 512):
        self.cfg = cfg
        self.url = cfg.url + "/chat/completions"
        self._key = api_key
        self.max_tokens = max_tokens
        self._down = threading.Event()  # once one request gives up, the others stop waiting

    def _post(self, prompt: str) -> dict:
        body = {
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.cfg.temperature,
            "max_tokens": self.max_tokens,
        }
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST")
        req.add_header("Content-Type", "application/json")
        if self._key:
            req.add_header("Authorization", f"Bearer {self._key}")
        with urllib.request.urlopen(req, timeout=self.cfg.timeout_seconds) as resp:
            return json.loads(resp.read().decode("utf-8", "replace"))

    def one(self, prompt: str) -> str | None:
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            if self._down.is_set():
                last = "another request found the endpoint down"
                break
            if attempt:
                time.sleep(min(self.backoff_cap, self.backoff_seconds * 2 ** (attempt - 1)))
            try:
                return reply_text(self._post(prompt))
            except urllib.error.HTTPError as e:
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code}"
                    continue
                if e.code in (400, 413, 422):  # this request (too long, refused): a judge error
                    log.warning("judge endpoint %s: HTTP %s on one request", self.url, e.code)
                    return None
                raise BadInput(
                    f"judge endpoint {self.url}: HTTP {e.code} {e.reason} "
                    "(check spec.judge.endpoint.url, .model and the API key secret)"
                ) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = str(getattr(e, "reason", e))
            except ValueError:
                return None  # a 200 that is not JSON: a garbage reply, not an outage
        self._down.set()
        raise JudgeUnavailable(
            f"judge endpoint {self.url} unreachable after {self.cfg.max_retries + 1} "
            f"attempt(s): {last}"
        )

    def complete(self, prompts: Sequence[str]) -> list[str | None]:
        if not prompts:
            return []
        counter = progress.current()  # the judge phase's Progress: one unit per call
        counter.expect(len(prompts))

        def counted(prompt: str) -> str | None:
            try:
                return self.one(prompt)
            finally:
                counter.advance()

        with ThreadPoolExecutor(max_workers=self.cfg.max_concurrency) as pool:
            return list(pool.map(counted, prompts))


def reply_text(body: Any) -> str | None:
    try:
        text = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return text if isinstance(text, str) else None


class EndpointPointwiseJudge(PointwiseJudge):
    def __init__(self, endpoint: ChatEndpoint):
        super().__init__()
        self.endpoint = endpoint
        self.unparsed = 0

    def score_items(self, items: Sequence[JudgeItem]) -> list[float | None]:
        replies = self.endpoint.complete(
            [pointwise_prompt(it.instruction, it.response or "") for it in items]
        )
        scores = [parse_rating(r) for r in replies]
        self.unparsed += sum(s is None for s in scores)
        return scores


class EndpointPairwiseJudge:
    def __init__(
        self,
        endpoint: ChatEndpoint,
        *,
        template: str | None = None,
        reference_field: str | None = None,
    ):
        self.endpoint = endpoint
        cfg = endpoint.cfg
        self.core = PairwiseCore(
            endpoint.complete,
            template=template,
            both_orders=cfg.both_orders,
            pairing=cfg.pairing,
            reference_field=reference_field,
            max_repeats=cfg.max_repeats,
        )

    @property
    def battles(self) -> list[dict]:
        return self.core.battles

    def score_groups(self, groups: Sequence[Sequence[JudgeItem]]) -> list[list[float | None]]:
        return self.core.score_groups(groups)

    def compare(self, pairs: Sequence[tuple[JudgeItem, JudgeItem]]) -> list[float | None]:
        return self.core.compare(pairs)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- programmatic


class ProgrammaticJudge(PointwiseJudge):
    """`module:function(instruction, response, record) -> float`; exceptions it raises are
    crashes (retried), a non-numeric return is bad input."""

    def __init__(self, cfg: S.ProgrammaticJudge):
        super().__init__()
        self.name = cfg.function
        module, _, fn = cfg.function.partition(":")
        try:
            self.fn = getattr(importlib.import_module(module), fn)
        except ImportError as e:
            raise BadInput(f"spec.judge.programmatic.function {self.name!r}: {e}") from None
        except AttributeError:
            raise BadInput(
                f"spec.judge.programmatic.function {self.name!r}: module {module!r} has no {fn!r}"
            ) from None
        if not callable(self.fn):
            raise BadInput(f"spec.judge.programmatic.function {self.name!r} is not callable")

    def score_items(self, items: Sequence[JudgeItem]) -> list[float | None]:
        return [self._one(it) for it in items]

    def _one(self, it: JudgeItem) -> float:
        value = self.fn(it.instruction, it.response, it.record)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise BadInput(
                f"judge function {self.name} returned {value!r} "
                f"({type(value).__name__}); expected a finite number"
            )
        return float(value)


# --------------------------------------------------------------------------- loader


def model_location(ref: S.ModelRef, what: str) -> str:
    if ref.path and not os.path.isfile(os.path.join(ref.path, "config.json")):
        raise BadInput(f"{what}.path: {ref.path}: no model there (config.json not found)")
    return ref.location


def load_judge(
    judge: S.Judge,
    *,
    env: Mapping[str, str] = os.environ,
    engine: S.Generation | None = None,
    reference_field: str | None = None,
    policy_dtype: str = "auto",
) -> Judge:
    """`engine`: the run's generation settings, for a local vLLM judge's pod-level options;
    `reference_field`: dataset.referenceField, which pairwise judges show as the reference;
    `policy_dtype`: spec.model.dtype, a local judge's dtype unless its block sets one."""
    if judge.type == "rewardModel":
        assert judge.reward_model is not None
        return RewardModelJudge(judge.reward_model, policy_dtype)
    if judge.type == "pairwise":
        assert judge.pairwise is not None
        return VllmPairwiseJudge(
            judge.pairwise,
            engine=engine,
            reference_field=reference_field,
            policy_dtype=policy_dtype,
        )
    if judge.type == "endpoint":
        cfg = judge.endpoint
        assert cfg is not None
        key = env.get(API_KEY_ENV) or None
        if cfg.api_key_secret_ref is not None and not key:
            raise BadInput(
                f"spec.judge.endpoint.apiKeySecretRef is set but {API_KEY_ENV} is empty "
                "(is the secret key present?)"
            )
        ep = ChatEndpoint(cfg, key)
        if cfg.mode == "pairwise":
            return EndpointPairwiseJudge(ep, reference_field=reference_field)
        return EndpointPointwiseJudge(ep)
    assert judge.programmatic is not None
    return ProgrammaticJudge(judge.programmatic)
