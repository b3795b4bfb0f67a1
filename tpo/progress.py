"""Progress and ETA of a long step, for people (a tqdm bar on a terminal) and machines.

Every long step (the tiny builds' SFT, and each phase: generate, judge, train, evaluate) opens
one `Progress` and advances it as work finishes. Where it goes:

- stderr is a terminal: a tqdm bar (rate and ETA are tqdm's).
- stderr is not a terminal (CI, pod logs, the local runner's phase logs): one plain line every
  `$TPO_PROGRESS_INTERVAL` seconds (default 15) and a last one when the step ends, in a stable
  format that `parse_line` reads back:

      progress generate it=1: 1200/3200 samples (37.5%), 41.2/s, ETA 0:00:48

  `?` stands for what is not known yet (no total, no rate before the first unit is done).
  `TPO_PROGRESS=lines|bar|off` overrides the choice.
- the phase pod's metrics endpoint (`tpo.podmetrics`: `tpo_progress_*` gauges), which the
  operator reads into `TPORun.status.progress` (docs/metrics.md, "Progress").

Rate and ETA are measured from the first unit counted in this process, not from the start:
model loading, engine start-up and a resumed trainer's earlier steps would otherwise bias them.

Work deep inside a backend (vLLM's engine loop, a batched judge) reports to whatever Progress is
open (`current()`) instead of taking one as an argument, so no interface between the phase and
its backends changes. A Progress opened without a total grows one as the backends announce
their batches (`expect`): the budgeted generation's second pass, a tournament's next round.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tpo.spec import RunProgress

INTERVAL_ENV = "TPO_PROGRESS_INTERVAL"
MODE_ENV = "TPO_PROGRESS"
DEFAULT_INTERVAL = 15.0

LINE_RE = re.compile(
    r"^progress (?P<label>[^:]+): (?P<done>\d+)/(?P<total>\d+|\?) (?P<unit>\S+) "
    r"\((?P<percent>\d+\.\d|\?)%\), (?P<rate>\d+(?:\.\d+)?|\?)/s, "
    r"ETA (?P<eta>\d+:\d\d:\d\d|\?)$"
)


def hms(seconds: float | None) -> str:
    """H:MM:SS (hours unbounded), '?' when unknown: one width rule, so lines parse alike."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def seconds_of(text: str) -> int | None:
    """The inverse of `hms`."""
    if text == "?":
        return None
    h, m, s = (int(x) for x in text.split(":"))
    return h * 3600 + m * 60 + s


@dataclass(frozen=True)
class Snapshot:
    """One reading of a Progress: what the line, the bar and the pod gauges show."""

    label: str
    done: int
    total: int | None
    unit: str
    rate: float | None  # units per second since the first unit
    eta: float | None  # seconds

    @property
    def percent(self) -> float | None:
        if not self.total:
            return None
        return min(100.0, 100.0 * self.done / self.total)

    def line(self) -> str:
        pct = self.percent
        return (
            f"progress {self.label}: {self.done}/{self.total if self.total else '?'} {self.unit} "
            f"({'?' if pct is None else f'{pct:.1f}'}%), "
            f"{'?' if self.rate is None else f'{self.rate:.1f}'}/s, ETA {hms(self.eta)}"
        )


def parse_line(line: str) -> Snapshot | None:
    """A progress line back into numbers (None if the line is not one)."""
    m = LINE_RE.match(line.strip())
    if not m:
        return None
    total = None if m["total"] == "?" else int(m["total"])
    rate = None if m["rate"] == "?" else float(m["rate"])
    eta = seconds_of(m["eta"])
    return Snapshot(m["label"], int(m["done"]), total, m["unit"], rate, eta)


def summary_of(p: RunProgress) -> str:
    """The PROGRESS column: `38% ETA 0:00:48`, `judge 12% ETA ?`, `1200 samples`, `starting`."""
    head = f"{p.stage} " if p.stage and p.stage != p.phase else ""
    if p.percent is not None:
        eta = "" if p.percent >= 100 else f" ETA {hms(p.eta_seconds)}"
        return f"{head}{p.percent:.0f}%{eta}"
    if p.done is not None:
        return f"{head}{p.done} {p.unit or ''}".rstrip()
    return "starting"


def stage_of(label: str) -> str | None:
    """The stage a line's label names beyond its step (`evaluate it=1 judge` -> judge)."""
    words = [w for w in label.split()[1:] if not w.startswith(("it=", "shard="))]
    return words[-1] if words else None


def run_progress(
    snap: Snapshot | None, phase: str, iteration: int, now: str, shard: int = 0, shards: int = 1
) -> RunProgress:
    """`status.progress` from one progress line of a step run in order, shard after shard (the
    local runner): percent credits the shards already done, as the operator's does."""
    from tpo.spec import RunProgress

    if snap is None:
        p = RunProgress(phase=phase, iteration=iteration, updated_at=now)
    else:
        pct = snap.percent
        if pct is not None:
            pct = (100.0 * shard + pct) / shards
        p = RunProgress(
            phase=phase,
            iteration=iteration,
            stage=stage_of(snap.label),
            done=snap.done,
            total=snap.total,
            unit=snap.unit,
            percent=pct,
            rate=snap.rate,
            eta_seconds=None if snap.eta is None else int(snap.eta),
            pods=1,
            updated_at=now,
        )
    return p.model_copy(update={"summary": summary_of(p)})


def finished_progress(phase: str, iteration: int, now: str) -> RunProgress:
    """A run's progress once it succeeded: its last step at 100%."""
    from tpo.spec import RunProgress

    p = RunProgress(phase=phase, iteration=iteration, percent=100.0, eta_seconds=0, updated_at=now)
    return p.model_copy(update={"summary": summary_of(p)})


def label_of(phase: str, iteration: int | None = None, shard: int | None = None) -> str:
    """`generate it=1 shard=2`: the words a line starts with (no ':' inside)."""
    parts = [phase]
    if iteration is not None:
        parts.append(f"it={iteration}")
    if shard is not None:
        parts.append(f"shard={shard}")
    return " ".join(parts)


_STEP: dict[str, str] = {"phase": "", "label": ""}


def set_step(phase: str, iteration: int | None = None, shard: int | None = None) -> None:
    """Names this process's step once (`tpo phase` does), for the labels of `task`."""
    _STEP.update(phase=phase, label=label_of(phase, iteration, shard))


def task(stage: str, unit: str, total: int | None = None) -> Progress:
    """A Progress for one stage of this process's step: labelled `generate it=1`, or
    `evaluate it=1 judge` for a stage other than the phase itself."""
    base = _STEP["label"] or stage
    label = base if stage == _STEP["phase"] or not _STEP["label"] else f"{base} {stage}"
    return Progress(label, total, unit, stage=stage)


def _interval() -> float:
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


def _mode(stream: IO[str]) -> str:
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode in ("lines", "bar", "off"):
        return mode
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


_CURRENT: list[Progress] = []
_GUARD = threading.Lock()


class Progress:
    """Counts units of one step; prints a bar or lines; feeds the pod's progress gauges.

    `stage` names the part of a phase that is counted (evaluate: its outputs, then its judge
    calls) and is a pod-gauge label. Thread-safe: the endpoint judge advances from its pool.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "it",
        *,
        stage: str = "",
        stream: IO[str] | None = None,
        interval: float | None = None,
        mode: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.unit, self.stage = label, unit, stage or unit
        self.total = total if total else None
        self.auto_total = total is None
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._interval = _interval() if interval is None else interval
        self._mode = mode or _mode(self._stream)
        self._clock = clock
        self._first: tuple[float, int] | None = None  # (time, done) at the first count
        self._last_line = -math.inf
        self._printed: tuple[int, int | None] | None = None
        self._lock = threading.Lock()
        self._bar: Any = None
        if self._mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total, desc=label, unit=f" {unit}", file=self._stream, dynamic_ncols=True
            )
        self._publish()

    # -- counting
    def expect(self, n: int) -> None:
        """A backend is about to do `n` more units (grows an open-ended total only)."""
        if n <= 0 or not self.auto_total:
            return
        with self._lock:
            self.total = (self.total or 0) + n
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()
        self._report()

    def advance(self, n: int = 1) -> None:
        """n more units (thread-safe: the endpoint judge's pool advances concurrently)."""
        if n > 0:
            self._move(None, n)

    def update_to(self, done: int) -> None:
        """Absolute position (a trainer's global step); the first call sets the rate's origin."""
        self._move(done, 0)

    def _move(self, done: int | None, delta: int) -> None:
        with self._lock:
            target = self.done + delta if done is None else done
            if self.total is not None:
                target = min(target, self.total)
            if self._first is None:
                # The origin is the first reading: what was done before (a resumed trainer's
                # steps, or the first batch's wait) does not count towards the rate.
                self._first = (self._clock(), target)
            step, self.done = target - self.done, target
            if self._bar is not None and step > 0:
                self._bar.update(step)
        self._report()

    # -- reading
    def snapshot(self) -> Snapshot:
        with self._lock:
            rate = eta = None
            if self._first is not None:
                t0, d0 = self._first
                elapsed, counted = self._clock() - t0, self.done - d0
                if elapsed > 0 and counted > 0:
                    rate = counted / elapsed
            if self.total is not None and self.done >= self.total:
                eta = 0.0
            elif rate and self.total is not None:
                eta = (self.total - self.done) / rate
            return Snapshot(self.label, self.done, self.total, self.unit, rate, eta)

    def _report(self, final: bool = False) -> None:
        snap = self._publish()
        if self._mode != "lines":
            return
        now = self._clock()
        finished = snap.total is not None and snap.done >= snap.total
        key = (snap.done, snap.total)
        due = now - self._last_line >= self._interval or finished or final
        if due and key != self._printed:
            self._last_line, self._printed = now, key
            print(snap.line(), file=self._stream, flush=True)

    def _publish(self) -> Snapshot:
        snap = self.snapshot()
        try:
            from tpo import podmetrics
        except ImportError:  # prometheus_client absent (the core install): no gauges
            return snap
        podmetrics.set_progress(self.stage, self.unit, snap.done, snap.total, snap.rate, snap.eta)
        return snap

    def close(self) -> None:
        self._report(final=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- the open Progress of this process
    def __enter__(self) -> Progress:
        with _GUARD:
            _CURRENT.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        with _GUARD:
            if self in _CURRENT:
                _CURRENT.remove(self)
        self.close()


class _Nothing:
    """What `current()` returns when no step counts: every call is a no-op."""

    auto_total = False

    def expect(self, n: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


def current() -> Progress | _Nothing:
    with _GUARD:
        return _CURRENT[-1] if _CURRENT else _Nothing()


def active() -> bool:
    with _GUARD:
        return bool(_CURRENT)


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """Backends called inside do not count (a sub-call whose units another call counts)."""
    with _GUARD:
        saved = list(_CURRENT)
        _CURRENT.clear()
    try:
        yield
    finally:
        with _GUARD:
            _CURRENT[:0] = saved


# --------------------------------------------------------------------------- vLLM


class _EngineBar:
    """What vLLM 0.32's `LLM.generate(use_tqdm=<callable>)` drives (vllm/entrypoints/common/
    offline.py `_run_engine`): built with total=<requests>, then `update(len(outputs))` per
    finished request, `format_dict["elapsed"]` read as a divisor, `postfix` set, `n` compared
    with the total, `refresh()`, `close()`. Each update is counted into the open Progress."""

    def __init__(self, target: Progress | _Nothing, scale: int, **kwargs: Any):
        self._target, self._scale = target, scale
        self._t0 = time.monotonic()
        self.n = 0
        self.total = kwargs.get("total")
        self.postfix = kwargs.get("postfix")

    @property
    def format_dict(self) -> dict[str, Any]:
        return {"elapsed": max(time.monotonic() - self._t0, 1e-6), "n": self.n}

    def update(self, n: int = 1) -> None:
        self.n += n
        self._target.advance(n * self._scale)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def vllm_use_tqdm(samples: int, scale: int = 1) -> bool | Callable[..., Any]:
    """The `use_tqdm` argument for one `LLM.generate` call of `samples` expected units: False
    (vLLM's own bar would duplicate ours) when nothing counts, else a callable feeding the open
    Progress. `scale`: units per reported output (greedy: one output stands for n samples)."""
    target = current()
    if isinstance(target, _Nothing):
        return False
    target.expect(samples)

    def bar(iterable: Any = None, **kwargs: Any) -> Any:
        # vLLM also wraps the prompts it renders (vllm/utils/tqdm_utils.py `maybe_tqdm`):
        # passed through uncounted; the engine loop's finished requests are what counts.
        if iterable is not None:
            return iterable
        return _EngineBar(target, scale, **kwargs)

    return bar


# --------------------------------------------------------------------------- HF Trainer


def trainer_callback(label: str, unit: str = "steps") -> Any:
    """A `transformers.TrainerCallback` that counts optimizer steps against `state.max_steps`
    (main process only): the seed's and the judge's SFT, the train phase's DPO."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.progress: Progress | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if state.is_world_process_zero and state.max_steps:
                self.progress = Progress(label, state.max_steps, unit, stage="train")
                self.progress.__enter__()

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if self.progress is not None:
                self.progress.update_to(state.global_step)

        def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if self.progress is not None:
                self.progress.update_to(state.global_step)
                self.progress.__exit__(None, None, None)
                self.progress = None

    return ProgressCallback()
