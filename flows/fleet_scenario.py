"""Flow: the paper's sequence for one approach — U1 (initial models), then K update cycles (U3).

    python -m flows.fleet_scenario --store DIR --cells N --cycles K --approach APPROACH --seed S [--json]
    python -m flows.fleet_scenario --store DIR --compare   # every approach, side by side
"""

from __future__ import annotations

import argparse
import json
import time
from typing import get_args

from prefect import flow

from flows import local_run_settings
from flows.fleet_update import datasets_location, fleet_update
from flows.params import Approach, FleetUpdateParameters, ScenarioParameters
from flows.save_model_set import save_model_set
from tasks.fleet import initial_models

__all__ = ["fleet_scenario", "main"]


# Parameters are validated: deployments pass them as JSON, which validation turns into ScenarioParameters.
@flow(name="fleet-scenario")
def fleet_scenario(params: ScenarioParameters = ScenarioParameters()) -> dict:
    """U1 then `cycles` x U3; returns the ids of the sets it created, oldest first."""
    lineage = params.lineage or f"fleet-{params.seed}"
    meta = {"cycle": 0, "seed": params.seed, "arch": params.arch, "cells": params.cells}
    current = initial_models(params.cells, params.seed, params.arch)
    saved = [save_model_set(current, params.store, params.approach, lineage=lineage, meta=meta)]
    update = FleetUpdateParameters(store=params.store, lineage=lineage, approach=params.approach,
                                   datasets=datasets_location(params.store, params.datasets))
    for _ in range(params.cycles):
        result = fleet_update(update, current=(saved[-1]["id"], meta, current))
        current, meta = result.pop("model_set"), {**meta, "cycle": result["cycle"]}
        saved.append(result)
    return {"lineage": lineage, "sets": [s["id"] for s in saved], "bytes": [s["bytes"] for s in saved]}


def _compare(args: argparse.Namespace) -> dict:
    """Run the scenario once per approach into sibling stores and compare what each stored."""
    from mmstore import Store

    results = {}
    for approach in get_args(Approach):
        store = f"{args.store.rstrip('/')}/{approach}"
        start = time.perf_counter()
        out = fleet_scenario(_params(args, approach, store))
        out["seconds"] = time.perf_counter() - start
        out["final"] = Store.open(store).recover(out["sets"][-1])
        results[approach] = out
    finals = [r.pop("final") for r in results.values()]
    identical = all(f.equals(finals[0]) for f in finals)
    return {"approaches": results, "identical_final_models": identical}


def _params(args: argparse.Namespace, approach: str, store: str) -> ScenarioParameters:
    return ScenarioParameters(store=store, cells=args.cells, cycles=args.cycles, approach=approach,
                              seed=args.seed, arch=args.arch, datasets=args.datasets)


def _print_comparison(report: dict) -> None:
    print(f"{'approach':12s} {'U1 bytes':>14s} {'bytes per U3 (mean)':>20s} {'wall time':>10s}")
    for approach, r in report["approaches"].items():
        cycles = r["bytes"][1:]
        mean = sum(cycles) / len(cycles) if cycles else 0
        print(f"{approach:12s} {r['bytes'][0]:>14,} {mean:>20,.0f} {r['seconds']:>9.1f}s")
    print("final models bit-identical across approaches:", report["identical_final_models"])


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="./mmstore-data")
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--approach", choices=get_args(Approach), default="update")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", choices=["ffnn48", "ffnn69"], default="ffnn48")
    parser.add_argument("--datasets", default=None, help="dataset location (default: STORE-datasets)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--compare", action="store_true", help="run every approach into STORE/<approach>")
    args = parser.parse_args(argv)
    with local_run_settings():
        if args.compare:
            report = _compare(args)
            print(json.dumps(report, indent=2)) if args.json else _print_comparison(report)
            return
        out = fleet_scenario(_params(args, args.approach, args.store))
    print(json.dumps(out)) if args.json else print("\n".join(out["sets"]))


if __name__ == "__main__":
    main()
