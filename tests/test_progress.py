"""tpo.progress: the non-terminal line format (stable, parseable), rate and ETA, the pod gauges,
and a real long step (the tiny seed's SFT) reporting progress with an ETA through a pipe."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tpo import podmetrics, progress
from tpo.progress import LINE_RE, Progress, Snapshot, hms, parse_line

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_hms_and_line_round_trip():
    assert hms(48) == "0:00:48"
    assert hms(3 * 3600 + 61) == "3:01:01"
    assert hms(None) == "?" and hms(float("inf")) == "?"
    snap = Snapshot("generate it=1 shard=2", 1200, 3200, "samples", 41.25, 48.4)
    line = snap.line()
    assert line == "progress generate it=1 shard=2: 1200/3200 samples (37.5%), 41.2/s, ETA 0:00:48"
    back = parse_line(line)
    assert back is not None and (back.done, back.total, back.unit) == (1200, 3200, "samples")
    assert back.eta == 48 and back.label == "generate it=1 shard=2"
    unknown = Snapshot("judge it=1", 3, None, "calls", None, None).line()
    assert unknown == "progress judge it=1: 3/? calls (?%), ?/s, ETA ?"
    assert parse_line(unknown) is not None
    assert parse_line("{'loss': 0.5}") is None


def test_lines_every_interval_with_rate_and_eta_from_the_first_count():
    clock, out = Clock(), io.StringIO()
    p = Progress("train it=2", 100, "steps", stream=out, interval=10, mode="lines", clock=clock)
    clock.t += 50  # model loading: not part of the rate
    p.update_to(20)  # a resumed trainer: 20 steps done before this process counted
    for _ in range(8):
        clock.t += 2.5
        p.advance(5)  # 2 steps/s
    p.close()
    lines = [parse_line(x) for x in out.getvalue().splitlines()]
    assert all(lines), out.getvalue()
    # First count printed at once, then once per 10 s (4 updates), and the end.
    assert [s.done for s in lines] == [20, 40, 60]  # type: ignore[union-attr]
    mid = lines[1]
    assert mid is not None and mid.rate == 2.0 and mid.eta == 30  # (100 - 40) / 2
    assert lines[-1] is not None and lines[-1].eta == 30 - 10


def test_finishing_prints_the_last_line_once():
    clock, out = Clock(), io.StringIO()
    with Progress("x", 4, "it", stream=out, interval=1e9, mode="lines", clock=clock) as p:
        for _ in range(4):
            clock.t += 1
            p.advance()
    text = out.getvalue().splitlines()
    assert text[-1] == "progress x: 4/4 it (100.0%), 1.0/s, ETA 0:00:00"
    assert len(text) == 2  # the first count and the end; close() adds no duplicate


def test_open_total_grows_with_what_backends_announce():
    with Progress("generate", None, "samples", mode="off") as p:
        assert progress.current() is p
        progress.current().expect(12)
        progress.current().advance(12)
        progress.current().expect(5)  # a budgeted generation's second pass
        assert (p.done, p.total) == (12, 17)
        with progress.muted():
            progress.current().advance(3)  # not counted
        assert p.done == 12
    assert not progress.active()
    fixed = Progress("train", 10, "steps", mode="off")
    fixed.expect(5)  # a known total is not grown
    fixed.advance(50)
    assert (fixed.done, fixed.total) == (10, 10)


def test_vllm_use_tqdm_callable_drives_the_open_progress_like_vllm_does():
    """What vllm/entrypoints/common/offline.py `_run_engine` does with a callable use_tqdm."""
    assert progress.vllm_use_tqdm(8) is False  # nothing counts: vLLM's own bar stays off
    with Progress("generate", None, "samples", mode="off") as p:
        factory = progress.vllm_use_tqdm(3 * 4, scale=1)
        assert callable(factory)
        prompts = ["a", "b", "c"]  # rendering: vllm/utils/tqdm_utils.py maybe_tqdm(it, ...)
        assert list(factory(prompts, desc="Adding requests")) == prompts
        pbar = factory(total=3, desc="Processed prompts", dynamic_ncols=True, postfix="x")
        for _ in range(3):
            speed = 100 / pbar.format_dict["elapsed"]  # vLLM divides by it
            pbar.postfix = f"est. speed input: {speed:.2f} toks/s"
            pbar.update(4)  # len(output.outputs): n samples of one finished request
            if pbar.n == 3:
                pbar.refresh()
        pbar.close()
        assert (p.done, p.total) == (12, 12)


def test_progress_gauges_one_series_at_a_time():
    podmetrics.configure(namespace="ns", run="r", phase="evaluate", iteration=1)
    Progress("evaluate it=1 outputs", 10, "samples", stage="outputs", mode="off").advance(4)
    p = Progress("evaluate it=1 judge", None, "calls", stage="judge", mode="off")
    p.advance(3)
    from prometheus_client import generate_latest

    text = generate_latest(podmetrics.REGISTRY).decode()
    got = {
        (s.name, s.labels["stage"], s.labels["unit"]): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("tpo_progress_")
    }
    podmetrics.configure()
    # the outputs stage's series are gone; no total and no rate yet: no series, never NaN
    assert got == {("tpo_progress_done", "judge", "calls"): 3.0}


def test_seed_build_reports_steps_with_an_eta_when_stderr_is_not_a_terminal(tmp_path):
    """A long step in non-terminal mode (stderr a pipe, as in CI and pod logs): parseable
    progress lines with done < total and an ETA, then the last one at 100%."""
    code = (
        "import sys; from pathlib import Path; from tpo.tiny import seed\n"
        "cfg = seed.BuildConfig(sft_examples=480, instructions=40, batch_size=16, layers=2)\n"
        "seed.build(Path(sys.argv[1]), cfg=cfg)\n"
    )
    env = {**os.environ, "TPO_PROGRESS_INTERVAL": "0", "HF_HUB_OFFLINE": "1"}
    env.pop(progress.MODE_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "seed")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("progress ")]
    assert lines, proc.stderr[-2000:]
    assert all(LINE_RE.match(x) for x in lines), lines
    snaps = [parse_line(x) for x in lines]
    assert all(s is not None and s.label == "tiny seed" and s.unit == "steps" for s in snaps)
    running = [s for s in snaps if s and s.total and s.done < s.total and s.eta is not None]
    assert running, lines
    assert running[0].rate is not None and running[0].rate > 0
    last = snaps[-1]
    assert last is not None and last.done == last.total == 30 and last.eta == 0


def test_concurrent_advances_are_all_counted():
    """The endpoint judge advances from its thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    p = Progress("judge", None, "calls", mode="off")
    p.expect(4000)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: p.advance(), range(4000)))
    assert p.done == 4000
