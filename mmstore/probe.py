"""The probing tool: record every layer's outputs and gradients, and find where two runs first diverge."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError
from torch import nn

from .digest import digest_bytes
from .errors import MMStoreError

__all__ = [
    "SCHEMA_VERSION", "ROOT", "ProbeError", "TensorStats", "ProbeEntry", "ProbeRecord", "Divergence", "ProbeDiff",
    "record", "compare", "state_digest",
]

SCHEMA_VERSION = 1
ROOT = "(model)"

Phase = Literal["forward", "backward", "param_grad"]


class ProbeError(MMStoreError):
    """A probe record cannot be made, read or written."""


class TensorStats(BaseModel):
    """Summary statistics of one tensor; None where the tensor is empty."""

    # Strict JSON has no NaN or infinity; they are written as strings and read back as floats.
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    abs_max: float | None
    nan_count: int


class ProbeEntry(BaseModel):
    """One captured tensor: which layer, which phase, when, and what it held."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    name: str
    module_type: str
    phase: Phase
    shape: tuple[int, ...]
    dtype: str
    digest: str
    stats: TensorStats

    def same_tensor(self, other: "ProbeEntry") -> bool:
        """True when both entries captured bit-identical tensors."""
        return (self.digest, self.shape, self.dtype) == (other.digest, other.shape, other.dtype)


class ProbeRecord(BaseModel):
    """Everything one probed forward and backward pass computed, in execution order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    seed: int
    input_digest: str
    params_digest: str
    training: bool
    torch_version: str
    meta: dict[str, JsonValue] = {}
    entries: tuple[ProbeEntry, ...]

    def save(self, path: str | Path) -> None:
        """Write the record as JSON."""
        try:
            Path(path).write_text(self.model_dump_json(indent=1))
        except OSError as exc:
            raise ProbeError(f"cannot write probe record {path}: {exc.strerror}; choose a writable path") from exc

    @classmethod
    def load(cls, path: str | Path) -> "ProbeRecord":
        """Read a record written by `save`."""
        try:
            return cls.model_validate_json(Path(path).read_bytes())
        except OSError as exc:
            raise ProbeError(f"cannot read probe record {path}: {exc.strerror}; check the path") from exc
        except ValidationError as exc:
            raise ProbeError(
                f"{path} is not a probe record of schema version {SCHEMA_VERSION}; "
                "write one with `mmstore probe record`"
            ) from exc


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _stats(tensor: torch.Tensor) -> TensorStats:
    t = tensor.detach().cpu()
    t = (t.abs() if t.is_complex() else t).to(torch.float64)
    nan_count = int(torch.isnan(t).sum())
    if t.numel() == 0:
        return TensorStats(mean=None, std=None, min=None, max=None, abs_max=None, nan_count=0)
    return TensorStats(
        mean=t.mean().item(), std=t.std(correction=0).item(), min=t.min().item(),
        max=t.max().item(), abs_max=t.abs().max().item(), nan_count=nan_count,
    )


def _tensors(value: object) -> Iterator[torch.Tensor]:
    """The tensors inside a hook argument: a tensor, or tuples, lists and dicts of them (None skipped)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def state_digest(model: nn.Module) -> str:
    """One digest of every parameter and buffer of `model`, with their names, dtypes and shapes."""
    state = model.state_dict()
    parts = [[name, str(t.dtype), list(t.shape), digest_bytes(_raw_bytes(t))] for name, t in state.items()]
    return digest_bytes(json.dumps(parts).encode())


class _Recorder:
    """Collects entries from the hooks in the order the hooks fire."""

    def __init__(self) -> None:
        self.entries: list[ProbeEntry] = []

    def add(self, name: str, module: nn.Module, phase: Phase, value: object) -> None:
        for tensor in _tensors(value):
            self.entries.append(ProbeEntry(
                index=len(self.entries), name=name, module_type=type(module).__name__, phase=phase,
                shape=tuple(tensor.shape), dtype=str(tensor.dtype).removeprefix("torch."),
                digest=digest_bytes(_raw_bytes(tensor)), stats=_stats(tensor),
            ))

    def hook(self, name: str, module: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        forward = module.register_forward_hook(lambda m, args, out: self.add(name, m, "forward", out))
        backward = module.register_full_backward_hook(lambda m, g_in, g_out: self.add(name, m, "backward", g_out))
        return [forward, backward]


def _probed_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    leaves = [(name, m) for name, m in model.named_modules() if name and next(m.children(), None) is None]
    return [(ROOT, model), *leaves]


def _sum_of_squares(output: torch.Tensor) -> torch.Tensor:
    return sum(((t**2).sum() for t in _tensors(output) if t.is_floating_point()), torch.zeros(()))


def record(
    model: nn.Module,
    inputs: torch.Tensor,
    seed: int,
    loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    meta: dict[str, JsonValue] | None = None,
) -> ProbeRecord:
    """Seed torch, run one forward and backward pass of `model` on `inputs`, and record every layer.

    The loss defaults to the sum of squares of the output. The model's gradients are reset first, so
    the recorded parameter gradients are this pass's alone; hooks are removed afterwards.
    """
    input_digest, params_digest = digest_bytes(_raw_bytes(inputs)), state_digest(model)
    recorder = _Recorder()
    handles = [h for name, module in _probed_modules(model) for h in recorder.hook(name, module)]
    try:
        _run(model, inputs, seed, loss or _sum_of_squares)
    finally:
        for handle in handles:
            handle.remove()
    _record_param_grads(model, recorder)
    return ProbeRecord(
        seed=seed, input_digest=input_digest, params_digest=params_digest, training=model.training,
        torch_version=torch.__version__, meta=meta or {}, entries=tuple(recorder.entries),
    )


def _run(model: nn.Module, inputs: torch.Tensor, seed: int, loss: Callable[[torch.Tensor], torch.Tensor]) -> None:
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        # Inputs rarely require grad, so the first layer's hook sees grad_output only: that is all we record.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        try:
            value = loss(model(inputs))
            if value.requires_grad:
                value.backward()
        except RuntimeError as exc:
            if "inplace" not in str(exc):
                raise
            raise ProbeError(
                "the model modifies a layer's output in place, which backward hooks cannot observe; "
                "build it with inplace=False (e.g. nn.ReLU(inplace=False)) to probe it"
            ) from exc


def _record_param_grads(model: nn.Module, recorder: _Recorder) -> None:
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(prefix=module_name, recurse=False):
            if param.grad is not None:
                recorder.add(name, module, "param_grad", param.grad)


class Divergence(BaseModel):
    """The first entry at which two records differ."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    index: int
    name: str
    module_type: str
    phase: Phase
    reason: str
    stat_delta: float | None


class ProbeDiff(BaseModel):
    """The result of comparing two probe records."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mismatched_inputs: tuple[str, ...]
    first: Divergence | None
    n_differing: int
    n_entries: tuple[int, int]

    @property
    def diverged(self) -> bool:
        """True when any recorded tensor differs."""
        return self.first is not None

    def summary(self) -> str:
        """A readable report: differing inputs, the first divergent layer, and how many entries differ."""
        lines = []
        if self.mismatched_inputs:
            lines.append(f"the runs differ in {', '.join(self.mismatched_inputs)}: divergence is expected")
        if self.first is None:
            return "\n".join([*lines, f"identical: all {self.n_entries[0]} entries match"])
        f = self.first
        delta = "" if f.stat_delta is None else f", summary statistics differ by up to {f.stat_delta:.3g}"
        where = f"layer {f.name!r} ({f.module_type}, {f.phase})"
        lines.append(f"first divergence at entry {f.index}: {where}: {f.reason}{delta}")
        lines.append(f"{self.n_differing} of {max(self.n_entries)} entries differ")
        return "\n".join(lines)


def _stat_delta(a: TensorStats, b: TensorStats) -> float | None:
    fields = ("mean", "std", "min", "max", "abs_max")
    pairs = [(getattr(a, f), getattr(b, f)) for f in fields]
    deltas = [abs(x - y) for x, y in pairs if x is not None and y is not None and not (math.isnan(x) and math.isnan(y))]
    return max(deltas, default=None)


def _entry_divergence(entry: ProbeEntry, reason: str, stat_delta: float | None = None) -> Divergence:
    return Divergence(index=entry.index, name=entry.name, module_type=entry.module_type, phase=entry.phase,
                      reason=reason, stat_delta=stat_delta)


def _divergence(a: ProbeEntry | None, b: ProbeEntry | None) -> Divergence | None:
    if a is None or b is None:
        return _entry_divergence(a or b, f"only the {'first' if b is None else 'second'} record has this entry")
    if (a.name, a.phase) != (b.name, b.phase):
        return _entry_divergence(a, f"execution order differs: the second record has {b.name} ({b.phase}) here")
    if a.same_tensor(b):
        return None
    if (a.shape, a.dtype) != (b.shape, b.dtype):
        return _entry_divergence(a, f"shape/dtype differ: {a.shape} {a.dtype} vs {b.shape} {b.dtype}")
    return _entry_divergence(a, "tensor bytes differ", _stat_delta(a.stats, b.stats))


def _mismatched_inputs(a: ProbeRecord, b: ProbeRecord) -> tuple[str, ...]:
    checks = {"input": a.input_digest != b.input_digest, "seed": a.seed != b.seed,
              "parameters": a.params_digest != b.params_digest, "train/eval mode": a.training != b.training}
    return tuple(name for name, differs in checks.items() if differs)


def compare(a: ProbeRecord, b: ProbeRecord) -> ProbeDiff:
    """Walk two records in execution order; report the first differing entry and how many differ."""
    pairs = itertools.zip_longest(a.entries, b.entries)
    divergences = [d for d in itertools.starmap(_divergence, pairs) if d is not None]
    return ProbeDiff(
        mismatched_inputs=_mismatched_inputs(a, b), first=divergences[0] if divergences else None,
        n_differing=len(divergences), n_entries=(len(a.entries), len(b.entries)),
    )
