"""Shared pieces of the benchmarks: timing, fleets of random models, result files."""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from mmstore import ArchSpec, ModelSet
from mmstore.layout import Layout

__all__ = [
    "median_time", "timed", "random_fleet", "scratch_dir", "write_results", "write_csv", "machine", "dir_bytes",
    "fsync_file", "write_durably", "RESULTS",
]

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def median_time(run: Callable[[], Any], repeats: int = 5, setup: Callable[[], Any] | None = None) -> float:
    """Median wall time of `run` over `repeats` runs, after one untimed warm-up; `setup` runs untimed."""
    times = []
    for i in range(repeats + 1):
        if setup:
            setup()
        start = time.perf_counter()
        run()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call of `run`, and its result."""
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def random_fleet(n: int, module_cls: type[torch.nn.Module], seed: int = 0) -> ModelSet:
    """n models of one architecture with trained-looking float32 weights (normal, scale 0.1)."""
    layout = Layout.of(module_cls().state_dict())
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal((n, layout.row_nbytes // 4), dtype=np.float32) * 0.1)
    return ModelSet(ArchSpec.of(module_cls), layout, values.view(np.uint8))


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory on the work disk, removed afterwards."""
    base = Path(os.environ.get("MMSTORE_BENCH_DIR", "build"))
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fsync_file(path: str | Path) -> None:
    """Flush a file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: str | Path, data: bytes) -> None:
    """Write a new file and fsync it before returning, as a durable save must."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def dir_bytes(path: Path) -> int:
    """Total size of the files below `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__}


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write a benchmark's results as JSON under docs/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def write_csv(name: str, rows: list[dict[str, Any]]) -> Path:
    """Write result rows (one dict each, same keys) as CSV under docs/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
