"""One simulated day on a device: find the drifted cells on the newest data and retrain them locally.

    python -m workloads.device_day DIR --first-cell N --day D --seed S [--arch ffnn48] [--full F] [--partial P]

retrains, in place, the models `mmstore device pull` wrote to DIR (the battery cells N, N+1, ...),
between that pull and `mmstore device push`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from safetensors.torch import save_file

from mmstore import ArchSpec, MMStoreError, ModelSet, Store
from mmstore.backend import open_backend
from mmstore.device import Device
from mmstore.device_cli import model_files, read_model_files
from mmstore.digest import digest_bytes
from workloads.drift import model_errors, select_updates
from workloads.fleet import Fleet
from workloads.models import ARCHITECTURES
from workloads.training import TrainRecipe, train_stacked

__all__ = ["DayResult", "retrain_day", "retrain_directory", "device_worker", "main"]


@dataclass(frozen=True)
class DayResult:
    """The retrained models of a day, which cells were retrained how, and their data's bytes."""

    models: ModelSet
    full: tuple[int, ...]
    partial: tuple[int, ...]
    data_nbytes: int


def retrain_day(models: ModelSet, fleet: Fleet, first_cell: int, day: int, arch: str,
                full_fraction: float, partial_fraction: float) -> DayResult:
    """Retrain the worst cells fully and the next worst in their last layer, each group in one batched run."""
    cls = ARCHITECTURES[arch]
    cells = np.arange(first_cell, first_cell + len(models))
    data = fleet.cycle_data(day, cells)
    errors = model_errors(cls, models.tensors(), data["x"], data["y"])
    full, partial = select_updates(errors, full_fraction, partial_fraction)
    rows = models.data.copy()
    for picked, trainable in ((full, None), (partial, tuple(cls.last_layers))):
        if len(picked):
            stacked = {name: t[picked] for name, t in models.tensors().items()}
            trained = train_stacked(cls, stacked, data["x"][picked], data["y"][picked], TrainRecipe(seed=day, trainable=trainable))
            rows[picked] = ModelSet.from_stacked(trained, models.arch, models.layout).data
    used = np.concatenate([full, partial]).astype(int)
    nbytes = int(data["x"][used].nbytes + data["y"][used].nbytes)
    return DayResult(ModelSet(models.arch, models.layout, rows), tuple(map(int, full)), tuple(map(int, partial)), nbytes)


def _yield_cpu() -> None:
    """Devices are other machines: here they run only on CPU time the store's side leaves idle.

    A niced process still holds a core for its time slice when a server thread wakes up; an idle-class
    one is preempted at once, so the ingest measured beside it waits on the network, not on the devices.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: the lowest nice value is the nearest thing
        os.nice(19)


def device_worker(store_url: str, inbox_url: str, devices: list[tuple[str, int]], days: int, seed: int, arch: str,
                  start: datetime, fractions: tuple[float, float], results) -> None:
    """Simulate `devices` (name, first cell) for `days` days: pull once, then retrain and push every day something drifted.

    Each push is reported on `results` as a dict; a failure is reported as {"error": ...} and ends the worker.
    """
    _yield_cpu()
    try:
        store, inbox = Store.open(store_url), open_backend(inbox_url)
        fleet = Fleet(seed, 0, ARCHITECTURES[arch])
        clients = {name: Device(name, store, inbox) for name, _ in devices}
        held = {name: clients[name].pull() for name, _ in devices}
        for day in range(1, days + 1):
            for name, first_cell in devices:
                result = retrain_day(held[name], fleet, first_cell, day, arch, *fractions)
                if not result.full and not result.partial:
                    continue  # nothing drifted: nothing to send
                when = (start + timedelta(days=day)).isoformat()
                push = clients[name].push(result.models, when)
                held[name] = result.models
                results.put({"device": name, "day": day, "time": when, "content": digest_bytes(result.models.data),
                             "kind": push.kind, "bytes": push.nbytes, "full_bytes": push.full_nbytes,
                             "delta_bytes": _option(push, "delta"), "data_bytes": result.data_nbytes,
                             "retrained": len(result.full) + len(result.partial)})
    except Exception:  # the parent reports it; a worker's traceback would be lost in its process
        results.put({"error": traceback.format_exc()})


def _option(push, name: str) -> int:
    return next(o.wire_bytes for o in push.choice.options if o.name == name)


def retrain_directory(directory: str, first_cell: int, day: int, seed: int, arch: str, fractions: tuple[float, float]) -> DayResult:
    """Retrain the drifted models of a pulled device directory in place (files of unchanged models stay as they were)."""
    cls = ARCHITECTURES[arch]
    paths = model_files(directory)
    if not paths:
        raise MMStoreError(f"{directory} holds no model files; run `mmstore device pull DEVICE {directory}` first")
    models = read_model_files(paths, list(cls().state_dict()), ArchSpec.of(cls))
    result = retrain_day(models, Fleet(seed, 0, cls), first_cell, day, arch, *fractions)
    try:
        for cell in (*result.full, *result.partial):
            save_file(result.models.state_dict(cell), paths[cell])
    except OSError as exc:
        raise MMStoreError(f"cannot write the retrained models into {directory} ({exc.strerror}); choose a writable directory") from None
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: retrain a pulled directory for one day; what was retrained, as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="the directory `mmstore device pull` wrote")
    parser.add_argument("--first-cell", type=int, required=True, help="the battery cell of the device's first model")
    parser.add_argument("--day", type=int, required=True, help="the day (drive cycle) whose data the cells saw")
    parser.add_argument("--seed", type=int, default=0, help="the fleet's seed")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="ffnn48")
    parser.add_argument("--full", type=float, default=0.05, help="share of cells retrained fully (the worst)")
    parser.add_argument("--partial", type=float, default=0.05, help="share retrained in their last layer (the next worst)")
    args = parser.parse_args(argv)
    try:
        result = retrain_directory(args.dir, args.first_cell, args.day, args.seed, args.arch, (args.full, args.partial))
    except MMStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"full": list(result.full), "partial": list(result.partial), "data_bytes": result.data_nbytes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
