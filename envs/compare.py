"""Comparing two fingerprints: which differences can change trained bits, and which cannot."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict

from .fingerprint import Fingerprint

__all__ = ["Severity", "Difference", "Comparison", "compare"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")

Severity = Literal["blocking", "warning", "info"]

# Flags that select vectorised kernels: a difference can change the low-order bits of results.
_SIMD_FLAG = re.compile(r"^(avx.*|fma4?|sse4.*|amx.*|f16c|neon|asimd.*|sve.*)$")
_NUMERIC_PACKAGE = re.compile(r"^(torch|numpy|mkl|intel-openmp|tbb|triton|nvidia-.*|scipy-openblas.*)$")


def _flag_severity(field: str, recorded: Any, current: Any) -> Severity:
    return "blocking" if _SIMD_FLAG.match(field.rsplit(".", 1)[1]) else "info"


def _package_severity(field: str, recorded: Any, current: Any) -> Severity:
    return "warning" if _NUMERIC_PACKAGE.match(field.split(".", 1)[1]) else "info"


def _image_severity(field: str, recorded: Any, current: Any) -> Severity:
    # Outside a pinned image there is nothing to compare the image against.
    return "blocking" if recorded and current else "info"


_Rule = Severity | Callable[[str, Any, Any], Severity]

# First match wins; a field no rule names is a warning.
_RULES: tuple[tuple[str, _Rule], ...] = (
    ("cpu.model", "warning"), ("cpu.flags.*", _flag_severity),
    ("torch.num_*threads", "warning"), ("torch.deterministic_algorithms", "warning"),
    ("torch.cudnn_deterministic", "warning"), ("torch.cudnn_benchmark", "warning"), ("torch.gpus", "warning"),
    ("torch.*", "blocking"), ("numpy.*", "blocking"), ("python.*", "blocking"), ("machine", "blocking"),
    ("os.system", "blocking"), ("os.*", "info"), ("env.*_NUM_THREADS", "warning"), ("env.*", "blocking"),
    ("packages.*", _package_severity), ("image_digest", _image_severity),
    ("hostname", "info"), ("container", "info"),
)


def _severity(field: str, recorded: Any, current: Any) -> Severity:
    rule = next((rule for pattern, rule in _RULES if fnmatchcase(field, pattern)), "warning")
    return rule(field, recorded, current) if callable(rule) else rule


class Difference(BaseModel):
    """One field whose value differs between a recorded and the current fingerprint."""

    model_config = _FROZEN
    field: str
    recorded: Any
    current: Any
    severity: Severity


class Comparison(BaseModel):
    """Every difference between two fingerprints, most severe first."""

    model_config = _FROZEN
    differences: tuple[Difference, ...]

    @property
    def blocking(self) -> list[Difference]:
        """The differences that can change computed bits."""
        return [d for d in self.differences if d.severity == "blocking"]

    @property
    def compatible(self) -> bool:
        """True when no difference blocks a bit-exact reproduction."""
        return not self.blocking

    def summary(self) -> str:
        """A readable report naming each differing field."""
        if not self.differences:
            return "environments are identical"
        verdict = "compatible" if self.compatible else f"INCOMPATIBLE ({len(self.blocking)} blocking)"
        lines = [f"{verdict}: {len(self.differences)} difference(s)"]
        lines += [f"  [{d.severity}] {d.field}: {d.recorded!r} -> {d.current!r}" for d in self.differences]
        return "\n".join(lines)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else key, out)
    else:
        out[prefix] = value
    return out


def _fields(fp: Fingerprint) -> dict[str, Any]:
    data = fp.model_dump(mode="json", exclude={"packages_digest"})
    # Sets become maps so that one added flag or package is one difference, not a whole list.
    data["cpu"]["flags"] = {flag: True for flag in fp.cpu.flags}
    data["packages"] = dict(p.split("==", 1) for p in fp.packages)
    return _flatten(data, "", {})


_ORDER = {"blocking": 0, "warning": 1, "info": 2}


def compare(recorded: Fingerprint, current: Fingerprint) -> Comparison:
    """The differences between a recorded fingerprint and the current one, with their severity."""
    old, new = _fields(recorded), _fields(current)
    diffs = [
        Difference(field=f, recorded=old.get(f), current=new.get(f), severity=_severity(f, old.get(f), new.get(f)))
        for f in sorted(old.keys() | new.keys()) if old.get(f) != new.get(f)
    ]
    return Comparison(differences=tuple(sorted(diffs, key=lambda d: _ORDER[d.severity])))
