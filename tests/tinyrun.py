"""Builders for tiny runs shared by the phase, local-runner and benchmark tests."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_spec(model: Path, dataset: Path, **over) -> dict:
    spec = {
        "model": {"path": str(model)},
        "dataset": {
            "path": str(dataset),
            "promptsPerIteration": 6,
            "evalPrompts": 4,
            "categoryField": "category",
        },
        "thoughtPrompt": {"type": "custom", "template": "Q: {instruction}\n", "separator": "a"},
        "iterations": 2,
        "generation": {
            "samples": 4,
            "maxTokens": 24,
            "backend": "transformers",
            "maxModelLen": 256,
            "enforceEager": True,
            "keepTruncated": True,  # the untrained test model never stops within maxTokens
        },
        "judge": {"type": "programmatic", "programmatic": {"function": "judge_fixtures:by_length"}},
        # The untrained model's greedy outputs are blank lines, and its thoughts rarely hold the
        # separator: greedy, or against the seed with the same prompt, every eval prompt would
        # have neither side parsed, which is no tie (tpo.evaluate.tally) and fails evaluate.
        # Sampled, the direct seed always answers something to rate against.
        "evaluation": {"baseline": "direct", "temperature": 0.8},
        "training": {
            "learningRate": 1e-4,
            "epochs": 1,
            "maxLength": 128,
            "lossType": ["sigmoid", "sft"],
            "gpusPerNode": 0,
        },
    }
    for k, v in over.items():
        spec[k] = {**spec[k], **v} if isinstance(v, dict) and isinstance(spec.get(k), dict) else v
    return spec


def write_dataset(path: Path, n: int = 20) -> Path:
    cats = ["add", "sub", "rev", "sort"]
    with open(path, "w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "instruction": f"What is {i} + {i * 3}?",
                        "category": cats[i % 4],
                        "answer": str(i * 4),
                    }
                )
                + "\n"
            )
    return path
