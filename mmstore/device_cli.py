"""The `mmstore device` commands (deploy a fleet set to device lineages, pull a device's models, push them back)
and `mmstore explain` (the cost model's view of a stored set).

A device works in a directory: `pull` writes one `.safetensors` file per model there, with the
models it started from kept beside them (`.mmstore-device.json`, `.mmstore-base.bin`); the device
retrains the files in place with any tool, and `push` sends what changed as one bundle. Given how
they were retrained (`--training FILE`, a JSON `TrainingFile`), sending that record is an option too.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from .arch import ArchSpec
from .auto import choose_approach
from .backend import open_backend
from .costmodel import max_delta_depth
from .device import Device, Training, deploy, enrol_deployed
from .digest import digest_bytes
from .errors import MMStoreError, OutputError
from .export import export_safetensors
from .ingest import DATASET_ALLOWANCE
from .modelset import ModelSet
from .store import Store

__all__ = ["register", "cmd_device_deploy", "cmd_device_enrol", "cmd_device_pull", "cmd_device_push", "cmd_explain", "model_files",
           "read_model_files", "TrainingFile"]

STATE, BASE_ROWS = ".mmstore-device.json", ".mmstore-base.bin"


def cmd_device_deploy(store: Store, args: argparse.Namespace) -> None:
    """Start one lineage per device, each a slice of a deployed fleet set (stored once)."""
    names = [f"{args.prefix}{i:04d}" for i in range(args.count)]
    heads = deploy(store, args.set, names, args.models)
    _print(args, {"devices": heads}, f"deployed {len(heads)} device lineages ({names[0]} ... {names[-1]})")


def cmd_device_enrol(store: Store, args: argparse.Namespace) -> None:
    """Mark lineages deployed by an older mmstore as device lineages, so that ingest takes their bundles."""
    fleets = enrol_deployed(store, args.devices)
    _print(args, {"devices": fleets}, f"enrolled {len(fleets)} device lineages")


def cmd_device_pull(store: Store, args: argparse.Namespace) -> None:
    """Write the device's newest models to a directory, one .safetensors file each."""
    device = Device(args.device, store, None)
    models = device.pull()
    paths = export_safetensors(models, args.dir, device.base_set or "")
    _write(os.path.join(args.dir, BASE_ROWS), models.data.tobytes())
    state = {"device": args.device, "base_set": device.base_set, "base_content": digest_bytes(models.data), "depth": 0}
    _write(os.path.join(args.dir, STATE), json.dumps(state).encode())
    _print(args, {"set": device.base_set, "files": paths}, f"pulled {len(paths)} models of {args.device} into {args.dir}")


def cmd_device_push(store: Store, args: argparse.Namespace) -> None:
    """Send the directory's models as one bundle: the changed tensors or every tensor, as the cost model chooses."""
    state = _read_state(args.dir, args.device)
    arch = store.arch_document(store.manifest(store.resolve(args.device)))
    base_rows = _read_base(args.dir, arch.layout.row_nbytes, state["base_content"])
    base = ModelSet(arch.arch, arch.layout, base_rows, trusted=store.settings.allowed_prefixes())
    inbox = open_backend(args.inbox or store.url.rstrip("/") + "-inbox", store.settings.durable)
    device = Device(args.device, store, inbox, base, state["base_set"], int(state["depth"]))
    training = _read_training(args.training) if args.training else None
    push = device.push(_read_models(args.dir, base), kind=args.kind, dry_run=args.dry_run, training=training)
    if not args.dry_run:
        _write(os.path.join(args.dir, BASE_ROWS), device.base.data.tobytes())
        state = {**state, "base_set": None, "base_content": digest_bytes(device.base.data), "depth": device.depth}
        _write(os.path.join(args.dir, STATE), json.dumps(state).encode())
    verb = "would send" if args.dry_run else "sent"
    _print(args, {"key": push.key, "kind": push.kind, "bytes": push.nbytes, "full_bytes": push.full_nbytes,
                  "choice": push.choice.model_dump(), "dry_run": args.dry_run},
           f"{push.choice.table()}\n{verb} a {push.kind} bundle of {push.nbytes:,} bytes ({push.key})")


def cmd_explain(store: Store, args: argparse.Namespace) -> None:
    """Show what storing a set over its base costs each way, which way the cost model picks, and its snapshot policy."""
    set_id = store.resolve(args.set)
    manifest = store.manifest(set_id)
    base = store.manifest(manifest.base) if manifest.base else None
    choice = choose_approach(store.recover(set_id), base, store, {})
    update = next(o for o in choice.options if o.name == "update")
    snapshot = next(o for o in choice.options if o.name == "baseline")
    depth = max_delta_depth(snapshot.stored_bytes, update.stored_bytes, store.settings)
    policy = (f"snapshot policy: deltas of this size stay within {store.settings.max_recover_seconds:g} s up to depth {depth}; "
              f"the update approach snapshots past depth {min(depth, store.settings.max_chain_depth)}")
    _print(args, {"set": set_id, "stored_as": manifest.approach, "choice": choice.model_dump(), "max_delta_depth": depth},
           f"set {set_id[:12]} is stored as {manifest.approach}\n{choice.table()}\n{policy}")


class TrainingFile(BaseModel):
    """How a device retrained: the trainer ("module:function"), its named recipes, per model its recipe and
    dataset file, the environment's fingerprint file, seconds per model by recipe, and datasets the store
    already holds (file -> URI). Paths are relative to the JSON file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trainer: str
    recipes: dict[str, dict[str, JsonValue]]
    changes: dict[int, tuple[str, str]] = Field(min_length=1)
    environment: str
    seconds: dict[str, Annotated[float, Field(ge=0)]] = {}
    held: dict[str, str] = {}


def _read_training(path: str) -> Training:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        spec = TrainingFile.model_validate_json(_read_file(path, 1 << 20))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise MMStoreError(f"{path} is not a training description: {where}: {first['msg']}; see `mmstore device push --help`") from None
    files = {name: _read_file(os.path.join(folder, name), DATASET_ALLOWANCE) for _, name in spec.changes.values()}
    unused = sorted(set(spec.held) - set(files))
    if unused:
        raise MMStoreError(f"{path} says the store holds {unused[0]!r}, which no retrained model used; "
                           "name under `held` only dataset files listed in `changes`")
    sent = sum(len(data) for name, data in files.items() if name not in spec.held)
    if sent > DATASET_ALLOWANCE:
        raise MMStoreError(f"the datasets of {path} are {sent:,} bytes, more than a bundle may carry; "
                           "name datasets the store holds under `held`, or push the changed tensors")
    return Training(spec.trainer, spec.recipes, {m: (recipe, files[name]) for m, (recipe, name) in spec.changes.items()},
                    _read_file(os.path.join(folder, spec.environment), 1 << 16).decode(errors="replace"), spec.seconds,
                    {digest_bytes(files[name]): uri for name, uri in spec.held.items()})


def _read_file(path: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise MMStoreError(f"cannot read {path} ({exc.strerror})") from None
    if len(data) > limit:
        raise MMStoreError(f"{path} is larger than {limit:,} bytes")
    return data


def _read_state(directory: str, device: str) -> dict:
    try:
        with open(os.path.join(directory, STATE), "rb") as f:
            state = json.loads(f.read(1 << 16))
    except (OSError, ValueError):
        raise MMStoreError(f"{directory} holds no pulled models; run `mmstore device pull {device} {directory}` first") from None
    if not isinstance(state, dict) or state.get("device") != device or not isinstance(state.get("depth"), int):
        raise MMStoreError(f"{directory} holds the models of another device or a damaged {STATE}; pull again")
    return state


def _read_base(directory: str, row_nbytes: int, content: str) -> np.ndarray:
    path = os.path.join(directory, BASE_ROWS)
    data = np.fromfile(path, dtype=np.uint8) if os.path.isfile(path) else np.empty(0, dtype=np.uint8)
    if not row_nbytes or data.size % row_nbytes or digest_bytes(data) != content:
        raise MMStoreError(f"the models {directory} started from ({BASE_ROWS}) are missing or changed; pull again")
    return data.reshape(-1, row_nbytes)


def _read_models(directory: str, base: ModelSet) -> ModelSet:
    paths = model_files(directory)
    if len(paths) != len(base):
        raise MMStoreError(f"{directory} holds {len(paths)} model files, the device has {len(base)} models; "
                           "keep one model-<index>.safetensors file per pulled model")
    return read_model_files(paths, [spec.name for spec in base.layout.tensors], base.arch)


def model_files(directory: str) -> list[str]:
    """The `model-<index>.safetensors` files `pull` wrote to a directory, in model order."""
    return sorted(glob.glob(os.path.join(glob.escape(directory), "model-*.safetensors")))


def read_model_files(paths: list[str], names: list[str], arch: ArchSpec) -> ModelSet:
    """The models in `paths` as one set, each holding exactly the tensors `names` (in the architecture's order)."""
    directory = os.path.dirname(paths[0]) if paths else "the directory"
    try:
        states = [load_file(path) for path in paths]
    except (OSError, SafetensorError) as exc:
        raise MMStoreError(f"cannot read the models in {directory} ({exc}); keep them as .safetensors files") from None
    if any(set(state) != set(names) for state in states):
        raise MMStoreError(f"the models in {directory} hold other tensors than the pulled ones; push retrained versions of them")
    # Files keep tensors in name order; the set keeps the models' own order, which its layout records.
    return ModelSet.from_state_dicts([{name: state[name] for name in names} for state in states], arch)


def _write(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror}); choose a writable directory") from None


def _print(args: argparse.Namespace, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False) else text)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `device deploy`, `device pull` and `device push` to the `mmstore` command."""
    device = sub.add_parser("device", help="work as a device: pull models, push what changed", parents=[common])
    commands = device.add_subparsers(dest="device_command", required=True)
    dep = commands.add_parser("deploy", help=cmd_device_deploy.__doc__, description=cmd_device_deploy.__doc__, parents=[common])
    dep.add_argument("set", help="the fleet set: id, id prefix or lineage")
    dep.add_argument("--count", type=int, required=True, help="how many devices")
    dep.add_argument("--models", type=int, required=True, help="models per device (device i holds models i*M ... i*M+M-1)")
    dep.add_argument("--prefix", default="device-", help="device lineage names: PREFIX0000, PREFIX0001, ...")
    dep.set_defaults(func=cmd_device_deploy)
    enrol = commands.add_parser("enrol", help=cmd_device_enrol.__doc__, description=cmd_device_enrol.__doc__, parents=[common])
    enrol.add_argument("devices", nargs="+", metavar="DEVICE", help="the device lineages to mark")
    enrol.set_defaults(func=cmd_device_enrol)
    pull = commands.add_parser("pull", help=cmd_device_pull.__doc__, description=cmd_device_pull.__doc__, parents=[common])
    push = commands.add_parser("push", help=cmd_device_push.__doc__, description=cmd_device_push.__doc__, parents=[common])
    for p in (pull, push):
        p.add_argument("device", help="the device's lineage name")
        p.add_argument("dir", help="the directory holding the device's models")
    pull.set_defaults(func=cmd_device_pull)
    push.add_argument("--inbox", help="inbox URL (default: the store URL + '-inbox')")
    push.add_argument("--kind", choices=["auto", "delta", "full", "provenance"], default="auto",
                      help="what to send (auto: the cost model decides; provenance needs --training)")
    push.add_argument("--training", metavar="FILE", help="how the models were retrained: a JSON file with trainer, recipes, "
                      "changes {model: [recipe, dataset file]}, environment (a fingerprint file) and optionally "
                      "seconds {recipe: seconds per model} and held {dataset file: URI the store reads it at}")
    push.add_argument("--dry-run", action="store_true", help="show the cost model's choice, send nothing")
    push.set_defaults(func=cmd_device_push)
    explain = sub.add_parser("explain", help=cmd_explain.__doc__, description=cmd_explain.__doc__, parents=[common])
    explain.add_argument("set", help="set id, id prefix or lineage")
    explain.set_defaults(func=cmd_explain)
