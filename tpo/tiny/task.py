"""The embedded example's task: small digit problems where a written scratchpad really helps.

A ~1 M-parameter model cannot add two 3-digit numbers "in its head", but it can copy one column
at a time into a units-first scratchpad and read the result back. So thinking before answering
pays off here, which is what TPO needs to show on 2 CPU cores: the seed sometimes writes a good
scratchpad and sometimes a useless or wrong one, and preference learning on the judged responses
teaches it to keep the good ones (docs/design.md, "The tiny demo's recipe").

Pure functions only: the seed builder (tpo.tiny.seed) and the judge both use them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

CATEGORIES = ("add", "sub", "count", "reverse")
RESPONSE_PREFIX = "The answer is"

# A wrong but well-formed answer earns a little, flat: more than garbage (so committing to an
# answer in the expected format is preferred), but never graded by closeness. Graded partial
# credit let best-vs-worst pairs "prefer" one wrong answer over another, and DPO + NLL then
# trained on wrong scratchpads (docs/design.md: partial credit can be won without right answers).
WRONG = 0.1
MAX_RESPONSE_CHARS = 40  # a longer response rambles: its score is halved

_ANSWER = re.compile(r"answer is\s*(\d+)", re.IGNORECASE)
_BARE = re.compile(r"^\s*(\d+)\s*\.?\s*$")

Problem = tuple[str, str, dict[str, Any]]  # (instruction, answer, operands for the scratchpad)


# --------------------------------------------------------------------------- problems


def _add(rng: random.Random) -> Problem:
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    return f"What is {a} + {b}?", str(a + b), {"a": a, "b": b}


def _sub(rng: random.Random) -> Problem:
    a = rng.randint(200, 999)
    b = rng.randint(100, a - 100)  # the difference keeps 3 digits: no leading zeros to strip
    return f"What is {a} - {b}?", str(a - b), {"a": a, "b": b}


def _count(rng: random.Random) -> Problem:
    d = str(rng.randint(0, 9))
    n = rng.randint(4, 6)
    hits = rng.randint(0, 3)
    others = [c for c in "0123456789" if c != d]
    digits = [d] * hits + [rng.choice(others) for _ in range(n - hits)]
    rng.shuffle(digits)
    s = "".join(digits)
    return f"How many times does the digit {d} appear in {s}?", str(hits), {"d": d, "s": s}


def _reverse(rng: random.Random) -> Problem:
    s = "".join(str(rng.randint(0, 9)) for _ in range(rng.randint(3, 5)))
    return f"Reverse the digits of {s}.", s[::-1], {"s": s}


_MAKERS: dict[str, Callable[[random.Random], Problem]] = {
    "add": _add,
    "sub": _sub,
    "count": _count,
    "reverse": _reverse,
}


def make_problem(category: str, rng: random.Random) -> Problem:
    return _MAKERS[category](rng)


def make_instructions(n: int, seed: int, *, exclude: set[str] | None = None) -> list[dict]:
    """n distinct instructions, categories balanced (round-robin), deterministic in `seed`.

    `exclude` keeps them disjoint from another set (the seed's SFT data vs the TPO prompts).
    """
    rng = random.Random(seed)
    taken = set(exclude or ())
    out: list[dict] = []
    while len(out) < n:
        category = CATEGORIES[len(out) % len(CATEGORIES)]
        instruction, answer, _ = make_problem(category, rng)
        if instruction in taken:
            continue
        taken.add(instruction)
        out.append(
            {
                "id": f"tiny-{seed}-{len(out):06d}",
                "instruction": instruction,
                "category": category,
                "answer": answer,
            }
        )
    return out


def write_dataset(path: str | Path, n: int, seed: int, *, exclude: set[str] | None = None) -> Path:
    """The instructions as JSONL (the dataset a TPORun's `spec.dataset.path` points at)."""
    from tpo.artifacts import write_jsonl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, make_instructions(n, seed, exclude=exclude))
    return path


def parse_problem(instruction: str) -> tuple[str, dict[str, Any]] | None:
    """(category, operands) back from an instruction's text; None if it is not one of ours."""
    if m := re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", instruction):
        cat = "add" if m.group(2) == "+" else "sub"
        return cat, {"a": int(m.group(1)), "b": int(m.group(3))}
    if m := re.fullmatch(r"How many times does the digit (\d) appear in (\d+)\?", instruction):
        return "count", {"d": m.group(1), "s": m.group(2)}
    if m := re.fullmatch(r"Reverse the digits of (\d+)\.", instruction):
        return "reverse", {"s": m.group(1)}
    return None


# --------------------------------------------------------------------------- scratchpads


def _digits(x: int, n: int) -> list[int]:
    """Units first."""
    return [(x // 10**i) % 10 for i in range(n)]


def _slip(value: int, rng: random.Random | None) -> int:
    """One off-by-one mistake, as a careless solver would make."""
    if rng is None:
        return value
    return (value + rng.choice((1, -1, 2))) % 10


def scratch_add(a: int, b: int, err: int | None = None, rng=None) -> tuple[str, str]:
    """Units-first column addition; `err` is the column where a slip happens (a wrong pad)."""
    da, db = _digits(a, 3), _digits(b, 3)
    steps, out, carry = [], [], 0
    for i in range(3):
        total = da[i] + db[i] + carry
        digit, new_carry = total % 10, total // 10
        if i == err:
            digit = _slip(digit, rng)
        steps.append(f"{da[i]}+{db[i]}+{carry}={total} c{new_carry}.")
        out.append(digit)
        carry = new_carry
    if carry:
        out.append(carry)
    result = "".join(str(d) for d in reversed(out))
    return " ".join(steps) + f" So {result}.", result


def scratch_sub(a: int, b: int, err: int | None = None, rng=None) -> tuple[str, str]:
    """Units-first column subtraction with borrows."""
    da, db = _digits(a, 3), _digits(b, 3)
    steps, out, borrow = [], [], 0
    for i in range(3):
        top = da[i] - borrow
        new_borrow = 1 if top < db[i] else 0
        digit = top + 10 * new_borrow - db[i]
        if i == err:
            digit = _slip(digit, rng)
        steps.append(f"{da[i]}-{db[i]}-{borrow}={digit} b{new_borrow}.")
        out.append(digit)
        borrow = new_borrow
    result = str(int("".join(str(d) for d in reversed(out))))
    return " ".join(steps) + f" So {result}.", result


def scratch_count(d: str, s: str, err: int | None = None, rng=None) -> tuple[str, str]:
    """A running count, one digit at a time; a slip miscounts one digit."""
    steps, count = [], 0
    for i, c in enumerate(s):
        hit = c == d
        if i == err and rng is not None:
            hit = not hit
        count += hit
        steps.append(f"{c} {'yes' if hit else 'no'} {count}.")
    return " ".join(steps) + f" So {count}.", str(count)


def scratch_reverse(s: str, err: int | None = None, rng=None) -> tuple[str, str]:
    """Number the digits, then read them back from the last position."""
    digits = list(s)
    if err is not None and rng is not None:
        j = err % len(digits)
        digits[j] = str(_slip(int(digits[j]), rng))
    labels = " ".join(f"{i + 1}={c}" for i, c in enumerate(s))
    back = "".join(reversed(digits))
    return f"{labels}. From {len(s)} to 1: {' '.join(back)}. So {back}.", back


def scratchpad(category: str, ops: dict[str, Any], err: int | None = None, rng=None):
    """(thought, the answer it leads to); with `err` the pad contains one slip."""
    if category == "add":
        return scratch_add(ops["a"], ops["b"], err, rng)
    if category == "sub":
        return scratch_sub(ops["a"], ops["b"], err, rng)
    if category == "count":
        return scratch_count(ops["d"], ops["s"], err, rng)
    return scratch_reverse(ops["s"], err, rng)


# --------------------------------------------------------------------------- judge


def extract_answer(response: str | None) -> str | None:
    """The number the response commits to: "The answer is N", or a bare number."""
    if not isinstance(response, str):
        return None
    if m := _ANSWER.search(response):
        return m.group(1)
    if m := _BARE.match(response):
        return m.group(1)
    return None


def judge(instruction: str, response: str, record: dict) -> float:
    """Score a RESPONSE against the record's expected answer (`tpo.tiny.task:judge`).

    1.0 right; 0.1 a wrong number; 0.0 garbage (no number committed to).
    A response longer than MAX_RESPONSE_CHARS scores half: rambling must not pay.
    The instruction is unused: the expected answer is in the record, and the thought never
    reaches a judge (the pipeline passes the response only).
    """
    want = str(record.get("answer", "")) if isinstance(record, dict) else ""
    got = extract_answer(response)
    if got is None or not want:
        return 0.0
    score = 1.0 if got == want else WRONG
    if len(response.strip()) > MAX_RESPONSE_CHARS:
        score *= 0.5
    return round(score, 4)


def exact(record: dict, response: str | None) -> bool:
    """Accuracy: the response commits to exactly the expected answer."""
    return extract_answer(response) == str(record.get("answer"))
