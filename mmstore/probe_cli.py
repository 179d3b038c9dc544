"""The `mmstore probe` commands: record a stored model's layers, compare two records."""

from __future__ import annotations

import argparse
import json

import torch

from .errors import MMStoreError
from .probe import ProbeDiff, ProbeRecord, compare, record
from .store import Store

__all__ = ["DivergenceError", "register", "cmd_probe_record", "cmd_probe_compare"]

# `compare` reads only files; a memory store keeps the CLI from demanding a store directory for it.
_NO_STORE = "memory://mmstore-probe-compare"


class DivergenceError(MMStoreError):
    """Two probe records differ."""


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise MMStoreError(f"--input-shape {text!r} is invalid; give positive sizes separated by commas, e.g. 32,5")
    return shape


def _input_dtype(model: torch.nn.Module) -> torch.dtype:
    floating = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return floating[0] if floating else torch.get_default_dtype()


def cmd_probe_record(store: Store, args: argparse.Namespace) -> None:
    """Record every layer's outputs and gradients of one stored model on a seeded input batch."""
    shape, set_id = _input_shape(args.input_shape), store.resolve(args.set)
    model = store.recover(set_id, models=[args.model]).model(0)
    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.randn(shape, generator=generator, dtype=_input_dtype(model))
    meta = {"set": set_id, "model": args.model, "input_shape": args.input_shape}
    probe = record(model, inputs, args.seed, meta=meta)
    probe.save(args.out)
    data = {"out": args.out, "set": set_id, "model": args.model, "entries": len(probe.entries)}
    _emit(args, data, f"recorded {len(probe.entries)} entries of model {args.model} of set {set_id[:12]} to {args.out}")


def cmd_probe_compare(store: Store, args: argparse.Namespace) -> None:
    """Compare two probe records and report the first layer at which they diverge."""
    diff = compare(ProbeRecord.load(args.a), ProbeRecord.load(args.b))
    _emit(args, diff.model_dump(mode="json") | {"diverged": diff.diverged}, diff.summary())
    if diff.diverged:
        raise DivergenceError(_advice(diff))


def _advice(diff: ProbeDiff) -> str:
    if diff.mismatched_inputs:
        return "the records diverge, but they were made from different inputs; record both from the same ones"
    first = diff.first
    where = f"layer {first.name!r} ({first.module_type}, {first.phase}, entry {first.index})"
    return (f"the records diverge first at {where}; "
            "look for non-deterministic operations or unseeded randomness in that layer")


def _emit(args: argparse.Namespace, data: dict, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `probe record` and `probe compare` to the `mmstore` command's subcommands."""
    probe = sub.add_parser("probe", help="record and compare layer-by-layer traces", parents=[common])
    commands = probe.add_subparsers(dest="probe_command", required=True)
    rec = commands.add_parser("record", help=cmd_probe_record.__doc__, description=cmd_probe_record.__doc__,
                              parents=[common])
    rec.add_argument("set", help="set id, id prefix or lineage")
    rec.add_argument("--model", type=int, default=0, help="model index within the set (default: %(default)s)")
    rec.add_argument("--input-shape", required=True, help="input batch shape, comma separated, e.g. 32,5")
    rec.add_argument("--seed", type=int, default=0, help="seed of the input batch and of torch (default: %(default)s)")
    rec.add_argument("--out", required=True, help="file to write the record to (JSON)")
    rec.set_defaults(func=cmd_probe_record)
    cmp = commands.add_parser("compare", help=cmd_probe_compare.__doc__, description=cmd_probe_compare.__doc__,
                              parents=[common])
    cmp.add_argument("a", help="first probe record")
    cmp.add_argument("b", help="second probe record")
    cmp.set_defaults(func=cmd_probe_compare, store=_NO_STORE)
