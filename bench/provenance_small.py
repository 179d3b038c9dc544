"""Small provenance recoveries: 50 FFNN-48 models, 5 of them retrained (default recipe), local disk.

Each recovery goes through a freshly opened store, with the default executor (`auto`) while no
worker processes run (as in a new process) and with `in-process`, taking turns. Run:
`python -m bench.provenance_small [--models N] [--repeats K]`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from envs import executors
from mmstore import ModelSet, Store
from workloads.fleet import Fleet

from .common import median_times, scratch_dir, write_results
from .provenance import initial_set, u3_cycle


def recoveries(url: str, set_id: str, expected: ModelSet, repeats: int) -> dict[str, float]:
    """Median seconds of each way to recover `set_id`, every result checked bit for bit."""

    def recover(executor: str) -> Callable[[], None]:
        def run() -> None:
            assert Store.open(url).recover(set_id, executor=executor).equals(expected), executor
            assert not executors._POOLS, "a small recovery started worker processes"
        return run

    return median_times({"auto_s": recover("auto"), "in_process_s": recover("in-process")}, repeats,
                        setup=executors.shutdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = initial_set(args.models, args.seed)
    with scratch_dir("mmstore-bench-provenance-small-") as root:
        derived, record = u3_cycle(Fleet(args.seed, args.models), base, str(root / "store-datasets"), args.seed)
        url = str(root / "store")
        Store.open(url).save(base, approach="provenance", lineage="fleet")
        set_id = Store.open(url).save(derived, approach="provenance", lineage="fleet", provenance=record)
        figures = recoveries(url, set_id, derived, args.repeats)
    result = {"models": args.models, "retrains": len(record.changes), "repeats": args.repeats, **figures,
              "auto_vs_in_process": figures["auto_s"] / figures["in_process_s"]}
    path = write_results("provenance_small", result)
    print(f"{args.models} FFNN-48 models, {result['retrains']} retrained; median of {args.repeats} (results in {path})")
    print(f"  recover with auto {figures['auto_s']:.3f} s, in-process {figures['in_process_s']:.3f} s "
          f"({result['auto_vs_in_process']:.2f}x)")


if __name__ == "__main__":
    main()
