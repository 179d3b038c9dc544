"""Baseline approach vs raw numpy I/O and one file per model: 5,000 FFNN-48 models, local disk.

Run: `make bench` (or `python -m bench.baseline [--models N] [--repeats K]`).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from safetensors.torch import load_file, save_file

from mmstore import Store
from workloads.models import FFNN48

from .common import (
    built_modules, dir_bytes, fsync_file, median_time, print_saves_from_modules, random_fleet, saves_from_modules,
    scratch_dir, write_results,
)


def raw_numpy(fleet, root) -> tuple[float, float]:
    """Durable `tofile` + fsync of the same bytes to a new file, and `np.fromfile` of them."""
    path = root / "raw.bin"

    def write() -> None:
        if path.exists():
            path.unlink()
        fleet.data.tofile(path)
        fsync_file(path)

    save = median_time(write)
    load = median_time(lambda: np.fromfile(path, dtype=np.uint8))
    return save, load


def mmstore_baseline(fleet, root) -> dict[str, float]:
    """Save through a fresh store, recover through a freshly opened one, materialise modules."""
    url = str(root / "store")
    state = {}

    def fresh() -> None:
        if os.path.exists(url):
            import shutil

            shutil.rmtree(url)

    save = median_time(lambda: state.update(id=Store.open(url).save(fleet)), setup=fresh)
    recover = median_time(lambda: state.update(ms=Store.open(url).recover(state["id"])))
    assert state["ms"].equals(fleet)
    to_modules = median_time(lambda: state["ms"].to_modules(), repeats=3)
    return {"save_s": save, "recover_s": recover, "to_modules_s": to_modules, "bytes_on_disk": dir_bytes(root / "store")}


def per_model_files(fleet, root, limit: int) -> dict[str, float]:
    """One safetensors file per model (fsynced), the way single-model tools store models."""
    target = root / "files"
    modules_sd = [{k: v.clone() for k, v in fleet.state_dict(i).items()} for i in range(limit)]

    def save() -> None:
        target.mkdir(exist_ok=True)
        for i, sd in enumerate(modules_sd):
            path = target / f"model-{i:05d}.safetensors"
            save_file(sd, path)
            fsync_file(path)

    save_s = median_time(save, repeats=3)
    load_s = median_time(lambda: [load_file(target / f"model-{i:05d}.safetensors") for i in range(limit)], repeats=3)
    return {"save_s": save_s, "recover_s": load_s, "bytes_on_disk": dir_bytes(target)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=5000)
    args = parser.parse_args()
    fleet = random_fleet(args.models, FFNN48)
    with scratch_dir("mmstore-bench-") as root:
        raw_save, raw_load = raw_numpy(fleet, root)
        ours = mmstore_baseline(fleet, root)
        files = per_model_files(fleet, root, args.models)
        from_modules = saves_from_modules(built_modules(args.models, FFNN48), root)
    result = {
        "models": args.models, "raw_bytes": fleet.nbytes,
        "numpy": {"save_s": raw_save, "recover_s": raw_load},
        "mmstore_baseline": ours, "one_file_per_model": files, "save_from_modules": from_modules,
        "ratios": {"save_vs_numpy": ours["save_s"] / raw_save, "recover_vs_numpy": ours["recover_s"] / raw_load,
                   "overhead_bytes": ours["bytes_on_disk"] - fleet.nbytes,
                   "save_from_modules_vs_naive": from_modules["from_modules_vs_naive"]},
    }
    path = write_results("baseline", result)
    print(f"{args.models} FFNN-48 models, {fleet.nbytes:,} raw bytes (median of 5; results in {path})")
    print(f"  numpy tofile+fsync {raw_save:.3f} s   np.fromfile {raw_load:.3f} s")
    print(f"  mmstore save       {ours['save_s']:.3f} s ({result['ratios']['save_vs_numpy']:.2f}x)   "
          f"recover {ours['recover_s']:.3f} s ({result['ratios']['recover_vs_numpy']:.2f}x)   "
          f"to_modules {ours['to_modules_s']:.3f} s")
    print(f"  bytes on disk      {ours['bytes_on_disk']:,} (+{result['ratios']['overhead_bytes']:,} over raw)")
    print(f"  one file per model save {files['save_s']:.3f} s   recover {files['recover_s']:.3f} s   "
          f"{files['bytes_on_disk']:,} bytes")
    print_saves_from_modules(from_modules)


if __name__ == "__main__":
    main()
