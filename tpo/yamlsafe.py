"""The one YAML writer of the project: output every YAML 1.1 and 1.2 parser reads the same way.

PyYAML quotes a string only when *its own* resolver would read the plain scalar as something
else. Other parsers resolve more: Go's YAML (sigs.k8s.io/yaml, which kubectl and Helm use) reads
`y`, `n`, `on`, `off` in several spellings as booleans, keys included, and `1e3`, `0o17`, `08`,
`+_1` as numbers; the YAML 1.2 core schema reads `1e3` and `0o17` as numbers too. A CRD with a
property named `n` was refused by a real kube-apiserver for exactly this reason. So a string is
written quoted whenever *any* of these readers could take its plain form for a bool, null or
number (`ambiguous`), as a key or as a value. Every command that prints YAML (`tpo crd`,
`tpo render`) and every generated file goes through `dump` / `dump_all` here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

# YAML 1.1 booleans (the spec's full list, as Go's yaml.v2 reads them) and nulls; compared
# case-insensitively so odd spellings (`yEs`) are quoted as well: harmless, and no reader guesses.
_WORDS = frozenset({"", "~", "null", "y", "yes", "n", "no", "true", "false", "on", "off"}) | {
    ".inf",
    "+.inf",
    "-.inf",
    ".nan",
}

_NUMBERS = [
    re.compile(p)
    for p in (
        # Decimal ints and floats with an optional exponent whose sign is optional (YAML 1.2
        # core and Go's yamlStyleFloat read `1e3`; PyYAML wants a dot and a signed exponent).
        r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?",
        r"[-+]?0[xX][0-9a-fA-F]+",  # hex
        r"[-+]?0[oO][0-7]+",  # YAML 1.2 / Go octal
        r"[-+]?0[bB][01]+",  # YAML 1.1 / Go binary
        # YAML 1.1 sexagesimal (base 60) ints and floats: `1:20` is 80 to PyYAML.
        r"[-+]?[0-9]+(:[0-5]?[0-9])+(\.[0-9]*)?",
    )
]


def ambiguous(text: str) -> bool:
    """True when some YAML 1.1 / 1.2 reader could take `text`, written plain, for a non-string.

    Underscores are dropped first, as YAML 1.1 and Go's yaml.v2 do inside numbers (Go drops
    them anywhere, so `+_1` is the integer 1 to kubectl).
    """
    if text.lower() in _WORDS:
        return True
    plain = text.replace("_", "")
    return bool(plain) and any(p.fullmatch(plain) for p in _NUMBERS)


class Dumper(yaml.SafeDumper):
    """SafeDumper whose strings are quoted when `ambiguous`; everything else as SafeDumper."""


def _represent_str(dumper: Dumper, data: str) -> yaml.ScalarNode:
    if ambiguous(data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    return dumper.represent_str(data)


Dumper.add_representer(str, _represent_str)


def dump(data: Any, *, sort_keys: bool = False, width: int = 100, **kw: Any) -> str:
    """One YAML document; keys keep their order unless `sort_keys`."""
    return yaml.dump(data, Dumper=Dumper, sort_keys=sort_keys, width=width, **kw)


def dump_all(docs: Iterable[Any], *, sort_keys: bool = False, width: int = 100, **kw: Any) -> str:
    """Several YAML documents separated by `---`."""
    return yaml.dump_all(docs, Dumper=Dumper, sort_keys=sort_keys, width=width, **kw)
