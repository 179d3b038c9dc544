"""Ingest capacity: a backlog of device bundles on S3 (moto on 127.0.0.1), drained by one run of the ingest flow.

    python -m bench.ingest [--devices 200] [--cells 100] [--days 3] [--out docs/results/ingest.json]

Each device day changes 10 of a device's FFNN-48 models (5% fully, 5% in the output layer, as drift
does). A first day is pushed and ingested on its own (`first_day`: every device's rows are read from
the fleet set then); then the bundles of `--days` more days wait in the inbox, `fleet-ingest` runs
once, and the bundles it committed per second of its run are the capacity figure. Then
`--hourly-runs` runs each find `--per-hour` bundles waiting, as the simulation's hourly runs do
(`hourly`: their bundles per second of ingest). Every device's
newest version is recovered and checked afterwards.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from flows import local_run_settings
from flows.ingest import fleet_ingest
from flows.params import IngestParameters
from flows.sim_support import local_s3
from mmstore import Catalog, ModelSet, Store
from mmstore.backend import open_backend
from mmstore.device import Device, deploy
from mmstore.digest import digest_bytes
from tasks.devices import device_names
from tasks.fleet import initial_models

__all__ = ["main"]


def _drift(models: ModelSet, rng: np.random.Generator) -> ModelSet:
    """Ten models changed: five in every tensor, five in the output layer only."""
    data, layout = models.data.copy(), models.layout
    picked = rng.choice(len(models), 10, replace=False)
    last = [t for t in layout.tensors if t.name.startswith("net.6.")]
    for i, model in enumerate(picked):
        for spec in layout.tensors if i < 5 else last:
            noise = rng.standard_normal(spec.nbytes // 4).astype(np.float32)
            data[model, spec.offset : spec.offset + spec.nbytes] = noise.view(np.uint8)
    return ModelSet(models.arch, models.layout, data)


def run(devices: int, cells: int, days: int, seed: int, hourly_runs: int = 10, per_hour: int = 33) -> dict:
    """Deploy, ingest a first day cold, then a backlog of `days` more warm, then hour-sized runs; verify; the figures."""
    url = "s3://ingest-bench/store"
    with local_s3(url, url + "-inbox"), local_run_settings():
        store = Store.open(url)
        fleet_id = store.save(initial_models.fn(devices * cells, seed, "ffnn48"), "update", lineage="fleet")
        deploy(store, fleet_id, device_names(devices), cells)
        Catalog(store).rebuild()
        inbox, rng, held = open_backend(url + "-inbox"), np.random.default_rng(seed), {}
        clients = {name: Device(name, Store.open(url), inbox) for name in device_names(devices)}
        uploaded = 0
        for client in clients.values():
            client.pull()

        def clients_of_hour(hour: int) -> list[str]:
            names = list(clients)
            return [names[(hour * per_hour + i) % len(names)] for i in range(per_hour)]

        def push_day(names: list[str] | None = None) -> None:
            nonlocal uploaded
            for name, client in ((n, clients[n]) for n in names or clients):
                models = _drift(client.base, rng)
                uploaded += client.push(models).nbytes
                held.setdefault(name, []).append(digest_bytes(models.data))

        push_day()
        cold = _drain(url)
        for _ in range(days):
            push_day()
        warm = _drain(url)
        hours = []
        for hour in range(hourly_runs):  # what the simulation's hourly runs see: a few dozen devices' bundles each
            push_day(clients_of_hour(hour))
            hours.append(_drain(url))
        check = Store.open(url)
        exact = sum(digest_bytes(check.recover(name).data) == contents[-1] for name, contents in held.items())
    return {"devices": devices, "cells": cells, "days": days, "bundles": devices * days, "committed": warm["committed"],
            "bytes_uploaded": uploaded, "flow_seconds": warm["flow_seconds"], "ingest_seconds": warm["seconds"],
            "bundles_per_second": warm["committed"] / warm["seconds"],
            "bundles_per_second_flow": warm["committed"] / warm["flow_seconds"],
            "first_day": cold, "heads_bit_exact": exact,
            "hourly": {"runs": hourly_runs, "bundles_per_run": per_hour, "committed": sum(h["committed"] for h in hours),
                       "seconds": sum(h["seconds"] for h in hours),
                       "bundles_per_second": sum(h["committed"] for h in hours) / max(1e-9, sum(h["seconds"] for h in hours))}}


def _drain(url: str) -> dict:
    """One run of the ingest flow over what waits in the inbox; what it committed and how long it took."""
    start = time.perf_counter()
    report = fleet_ingest(IngestParameters(store=url, batches=8))
    committed = report["counts"].get("committed", 0)
    return {"committed": committed, "seconds": report["seconds"], "flow_seconds": time.perf_counter() - start,
            "bundles_per_second": committed / report["seconds"]}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hourly-runs", type=int, default=10, help="runs of an hour's bundles after the backlog")
    parser.add_argument("--per-hour", type=int, default=33, help="bundles per hourly run (the simulation sees about 33)")
    parser.add_argument("--out", default="docs/results/ingest.json")
    args = parser.parse_args(argv)
    result = run(args.devices, args.cells, args.days, args.seed, args.hourly_runs, args.per_hour)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
