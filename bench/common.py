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

from mmstore import ArchSpec, ModelSet, Store
from mmstore.layout import Layout

__all__ = [
    "median_time", "median_times", "timed", "random_fleet", "built_modules", "scratch_dir", "write_results",
    "write_csv", "machine", "dir_bytes", "fsync_file", "write_durably", "naive_save", "saves_from_modules",
    "print_saves_from_modules", "RESULTS",
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


def median_times(runs: dict[str, Callable[[], Any]], repeats: int = 5,
                 setup: Callable[[], Any] | None = None) -> dict[str, float]:
    """Median wall time of each run, taking turns (so load from elsewhere hits all alike), after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats + 1):
        for name, run in runs.items():
            if setup:
                setup()
            start = time.perf_counter()
            run()
            if i:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


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


def built_modules(n: int, module_cls: type[torch.nn.Module], seed: int = 0) -> list[torch.nn.Module]:
    """n modules built the ordinary way (each tensor its own allocation), as training code holds them."""
    torch.manual_seed(seed)
    return [module_cls() for _ in range(n)]


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


def naive_save(modules: list[torch.nn.Module], path: Path) -> None:
    """Every state-dict tensor of every model concatenated with numpy, written to a new file and fsynced."""
    buffer = np.concatenate([t.numpy().reshape(-1).view(np.uint8) for m in modules for t in m.state_dict().values()])
    path.unlink(missing_ok=True)
    write_durably(path, buffer)


def saves_from_modules(modules: list[torch.nn.Module], root: Path, approach: str = "baseline",
                       base: ModelSet | None = None) -> dict[str, float]:
    """Durable saves into a fresh store (holding only `base`, if given): from a ready set, from the modules, naively.

    "From the modules" is what a training job does: `ModelSet.from_modules` and `Store.save`; the
    naive path writes the same bytes without a store. All three take turns in one run.
    """
    url = str(root / "from-modules")
    ready = ModelSet.from_modules(modules)

    def fresh() -> None:
        shutil.rmtree(url, ignore_errors=True)
        if base is not None:
            Store.open(url).save(base, approach=approach, lineage="bench")

    def save(model_set: Callable[[], ModelSet]) -> Callable[[], str]:
        return lambda: Store.open(url).save(model_set(), approach=approach, lineage="bench")

    times = median_times({
        "numpy_naive_s": lambda: naive_save(modules, root / "naive.bin"),
        "from_set_s": save(lambda: ready),
        "from_modules_s": save(lambda: ModelSet.from_modules(modules)),
    }, setup=fresh)
    assert Store.open(url).recover("bench").equals(ready)  # the last turn saved from the modules
    collect = median_time(lambda: ModelSet.from_modules(modules))
    return {**times, "collect_s": collect, "from_modules_vs_naive": times["from_modules_s"] / times["numpy_naive_s"]}


def print_saves_from_modules(figures: dict[str, float]) -> None:
    """The figures of `saves_from_modules`, one line."""
    print(f"  ModelSet.from_modules {figures['collect_s']:.3f} s; durable save from the modules "
          f"{figures['from_modules_s']:.3f} s ({figures['from_modules_vs_naive']:.2f}x the naive numpy write "
          f"{figures['numpy_naive_s']:.3f} s), from a ready set {figures['from_set_s']:.3f} s")


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
