"""The fleet catalog on 1,000 device lineages x 20 versions = 20,000 sets, local disk and moto S3.

Run as `python -m bench.catalog [--devices N] [--versions V]`. Each query runs on a freshly opened
store (nothing cached) behind a wrapper that counts backend requests; the bar is at most 5 requests
and under 1 s for "newest version of every device" and "device D at time T". The store is written
once locally with `durable=False` (setup only) and copied object by object to S3.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import torch

from mmstore import ArchSpec, ModelSet, Settings, Store
from mmstore.catalog import Catalog
from mmstore.layout import Layout

from .common import scratch_dir, write_results

__all__ = ["CountingBackend", "HttpCounter", "device_set", "build_fleet", "device_time", "measure"]

KWARGS = {"in_features": 4, "out_features": 2}
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
BAR_REQUESTS, BAR_SECONDS = 5, 1.0


class CountingBackend:
    """A real backend that counts every request made through it, by operation."""

    def __init__(self, backend: Any):
        self._backend, self.url, self.calls = backend, backend.url, Counter()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._backend, name)
        if not callable(real):
            return real

        def counted(*args: Any, **kwargs: Any) -> Any:
            """The real operation, counted."""
            self.calls[name] += 1
            return real(*args, **kwargs)

        return counted

    @property
    def total(self) -> int:
        """Requests made so far."""
        return sum(self.calls.values())


ARCH, LAYOUT = ArchSpec(factory="torch.nn:Linear", kwargs=KWARGS), Layout.of(torch.nn.Linear(**KWARGS).state_dict())


def device_set(cells: int, seed: int) -> ModelSet:
    """`cells` tiny Linear models with seeded random weights: one device's version."""
    values = np.random.default_rng(seed).standard_normal((cells, LAYOUT.row_nbytes // 4), dtype=np.float32)
    return ModelSet(ARCH, LAYOUT, values.view(np.uint8))


def device_time(device: int, version: int) -> str:
    """When device `device` trained its version `version`: one per day, devices a minute apart."""
    return (START + timedelta(days=version, minutes=device)).isoformat()


def build_fleet(store: Store, devices: int, versions: int, cells: int = 1, seed: int = 0,
                base: str | None = None) -> dict[str, list[tuple[str, int]]]:
    """Save `versions` versions of `devices` lineages day by day; lineage -> [(device time, data seed)]."""
    saved: dict[str, list[tuple[str, int]]] = {}
    for version in range(versions):
        for device in range(devices):
            name, data_seed = f"car-{device:04d}", seed * 1_000_003 + device * 1_009 + version
            start = base if version == 0 else None
            store.save(device_set(cells, data_seed), base=start, lineage=name,
                       meta={"device_time": device_time(device, version)})
            saved.setdefault(name, []).append((device_time(device, version), data_seed))
    return saved


class HttpCounter(logging.Handler):
    """Counts the HTTP requests moto's server logs (one line each), silently."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        """One request served."""
        self.count += 1


def measure(url: str, devices: int, versions: int, http: HttpCounter | None = None,
            **options: Any) -> dict[str, dict[str, float]]:
    """Requests and seconds of each query on a freshly opened store (median seconds of 5 runs)."""
    rng = np.random.default_rng(0)
    queries = {
        "heads()": lambda c: c.heads(),
        "changed_since(T)": lambda c: c.changed_since(device_time(0, versions - 2)),
        "at(D, T)": lambda c: c.at(f"car-{rng.integers(devices):04d}", device_time(devices, int(rng.integers(versions)))),
        "rebuild()": lambda c: c.rebuild(),
    }
    results = {}
    for name, query in queries.items():
        seconds, requests = [], []
        for _ in range(1 if name == "rebuild()" else 5):
            counting = CountingBackend(Store.open(url, Settings(durable=False), **options).backend)
            catalog = Catalog(Store(counting, Settings(durable=False)))
            served, start = http.count if http else 0, time.perf_counter()
            query(catalog)
            seconds.append(time.perf_counter() - start)
            requests.append((counting.total, http.count - served if http else None))
        results[name] = {"requests": max(r for r, _ in requests), "seconds": statistics.median(seconds)}
        if http:
            results[name]["http_requests"] = max(h for _, h in requests)
    return results


def _copy_to_s3(root: str, url: str, fs: Any) -> None:
    """Every object of the local store at `root` under `url`, in one batched upload."""
    objects = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                objects[f"{url.removeprefix('s3://')}/{os.path.relpath(path, root)}"] = f.read()
    fs.pipe(objects)


def main() -> None:
    """Build the fleet, catalog it, measure the queries on local disk and on moto's S3 server."""
    # Imported here, not above: the tests' writer processes import this module for its fleet alone.
    import s3fs
    from moto.server import ThreadedMotoServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--versions", type=int, default=20)
    args = parser.parse_args()
    with scratch_dir("catalog") as root:
        local = os.path.join(root, "store")
        store = Store.open(local, Settings(durable=False))
        start = time.perf_counter()
        build_fleet(store, args.devices, args.versions)
        Catalog(store).rebuild()
        print(f"{args.devices * args.versions} sets written and catalogued in {time.perf_counter() - start:.1f} s")
        results = {"sets": args.devices * args.versions, "local": measure(local, args.devices, args.versions)}
        http = HttpCounter()
        werkzeug = logging.getLogger("werkzeug")
        werkzeug.addHandler(http)
        werkzeug.setLevel(logging.INFO)
        werkzeug.propagate = False
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
            options = {"key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": endpoint}}
            fs = s3fs.S3FileSystem(**options)
            fs.mkdir("catalog-bench")
            _copy_to_s3(local, "s3://catalog-bench/store", fs)
            results["s3"] = measure("s3://catalog-bench/store", args.devices, args.versions, http, **options)
        finally:
            server.stop()
    for where in ("local", "s3"):
        for name, figure in results[where].items():
            http = f" ({figure['http_requests']} HTTP)" if "http_requests" in figure else ""
            print(f"{where:6} {name:18} {figure['requests']:6d} requests{http}  {figure['seconds']:.3f} s")
    write_results("catalog", results)


if __name__ == "__main__":
    main()
