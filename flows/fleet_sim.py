"""Flow: a simulated device fleet — devices retrain their cells every day and push bundles, ingest runs meanwhile.

    python -m flows.fleet_sim --store URL --devices N --cells M --days D --seed S [--inbox URL] [--json] [--plot PNG]

Device processes push concurrently into the inbox (beside the store unless --inbox is given) while the
ingest flow runs every simulated hour (`--ingest-every` seconds of wall time). At the end every version
every device held is recovered from the store and checked bit for bit. With an s3:// URL and no
AWS_ENDPOINT_URL set, a moto S3 server is started on 127.0.0.1 for the run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows import local_run_settings
from flows.ingest import fleet_ingest
from flows.params import FleetSimParameters, IngestParameters, inbox_location
from flows.sim_support import local_s3, plot_report
from tasks.devices import deploy_fleet, device_names, verify_versions
from workloads.device_day import device_worker

__all__ = ["fleet_sim", "main"]

_START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@flow(name="fleet-sim")
def fleet_sim(params: FleetSimParameters = FleetSimParameters()) -> dict:
    """Deploy, run the devices and the ingest side by side, verify every version; the figures as a dict."""
    inbox = inbox_location(params.store, params.inbox)
    started = time.perf_counter()
    heads = deploy_fleet(params.store, params.devices, params.cells, params.seed, params.arch, _START.isoformat())
    pushes, ingests = _run(params, inbox)
    checks = [verify_versions.submit(params.store, device, [p["content"] for p in mine])
              for device, mine in _by_device(pushes).items()]
    results = [check.result() for check in checks]
    verified, stored = sum(r["verified"] for r in results), sum(r["stored"] for r in results)
    report = _report(params, heads, pushes, ingests, verified, time.perf_counter() - started)
    report |= {"bytes_stored": stored, "uploaded_per_stored": report["bytes_uploaded"] / stored if stored else 0.0}
    create_markdown_artifact(_markdown(report), key="fleet-sim", description="Simulated device fleet")
    get_run_logger().info("%d bundles, %d ingested, %d of %d versions verified", report["bundles"], report["ingested"],
                          verified, report["versions_total"])
    return report


def _run(params: FleetSimParameters, inbox: str) -> tuple[list[dict], list[dict]]:
    """Device processes push while the ingest flow runs every `ingest_every` seconds, until all is ingested."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    names = device_names(params.devices)
    shares = [[(names[i], i * params.cells) for i in range(w, params.devices, params.processes)] for w in range(params.processes)]
    workers = [context.Process(target=device_worker, daemon=True,
                               args=(params.store, inbox, share, params.days, params.seed, params.arch, _START,
                                     (params.full_fraction, params.partial_fraction), results))
               for share in shares if share]
    for worker in workers:
        worker.start()
    pushes, ingests = [], []
    while True:
        pushes += _drain(results)
        done = not any(w.is_alive() for w in workers)
        run = fleet_ingest(IngestParameters(store=params.store, inbox=inbox, batches=params.batches))
        ingests.append({k: run[k] for k in ("counts", "bytes", "seconds")} | {"pushed": len(pushes)})
        if done and not run["counts"]:
            break
        if not done:
            time.sleep(params.ingest_every)
    for worker in workers:
        worker.join(timeout=5)
    pushes += _drain(results)
    errors = [p["error"] for p in pushes if "error" in p]
    if errors:
        raise RuntimeError(f"a device process failed: {errors[0]}")
    return pushes, ingests


def _drain(results) -> list[dict]:
    out = []
    while True:
        try:
            out.append(results.get(timeout=0.05))
        except queue.Empty:
            return out


def _by_device(pushes: list[dict]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for push in pushes:
        grouped[push["device"]].append(push)
    return dict(sorted(grouped.items()))


def _report(params: FleetSimParameters, heads: dict, pushes: list[dict], ingests: list[dict], verified: int, seconds: float) -> dict:
    counts = Counter()
    for run in ingests:
        counts.update(run["counts"])
    ingest_seconds = sum(run["seconds"] for run in ingests)
    device_days = max(1, len(pushes))
    return {
        "devices": params.devices, "cells": params.cells, "days": params.days, "seed": params.seed,
        "bundles": len(pushes), "ingested": counts["committed"], "duplicates": counts["duplicate"],
        "quarantined": counts["quarantined"], "bytes_uploaded": sum(p["bytes"] for p in pushes),
        "bytes_full_upload": sum(p["full_bytes"] for p in pushes),
        "bytes_training_data": sum(p["data_bytes"] for p in pushes),
        "bytes_per_device_day": {"chosen": sum(p["bytes"] for p in pushes) / device_days,
                                 "delta": sum(p["delta_bytes"] for p in pushes) / device_days,
                                 "full": sum(p["full_bytes"] for p in pushes) / device_days,
                                 "provenance_data": sum(p["data_bytes"] for p in pushes) / device_days},
        "choices": dict(Counter(p["kind"] for p in pushes)),
        "ingest_seconds": ingest_seconds, "ingest_runs": len(ingests),
        "bundles_per_second": counts["committed"] / ingest_seconds if ingest_seconds else 0.0,
        "ingest_timeline": ingests, "wall_seconds": seconds,
        "versions_verified": verified, "versions_total": len(pushes), "lineages": sorted(heads),
    }


def _markdown(report: dict) -> str:
    per_day = report["bytes_per_device_day"]
    return (f"## Simulated fleet: {report['devices']} devices x {report['cells']} cells, {report['days']} days\n\n"
            f"- {report['bundles']} bundles, {report['ingested']} ingested, {report['quarantined']} quarantined\n"
            f"- bytes per device-day: {per_day['chosen']:,.0f} sent, {per_day['full']:,.0f} for whole models; "
            f"{report['uploaded_per_stored']:.2f} bytes sent per byte stored\n"
            f"- ingest: {report['bundles_per_second']:.1f} bundles/s over {report['ingest_runs']} runs\n"
            f"- **{report['versions_verified']} of {report['versions_total']}** versions recovered bit for bit\n")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: the report as text, or as one JSON object with --json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in FleetSimParameters.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(field.default) if field.default is not None else str, default=field.default,
                            required=field.is_required(), help=field.description)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", default=None, help="write the figures to this PNG file")
    args = vars(parser.parse_args(argv))
    as_json, plot = args.pop("json"), args.pop("plot")
    params = FleetSimParameters(**args)
    with local_s3(params.store, inbox_location(params.store, params.inbox)), local_run_settings():
        report = fleet_sim(params)
    if plot:
        plot_report(report, plot)
    if as_json:
        print(json.dumps(report))
    else:
        print(_markdown(report).replace("**", ""), file=sys.stdout)


if __name__ == "__main__":
    main()
