"""Flow: ingest the bundles devices left in the inbox, in a few batched tasks, and index the new versions.

    python -m flows.ingest --store URL [--inbox URL] [--batches N]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows import local_run_settings
from flows.params import IngestParameters, inbox_location
from tasks.ingest import catalog_heads, ingest_slots, pending_batches, publish_heads, spread, sweep

__all__ = ["fleet_ingest", "main"]

# A task per this many waiting bundles, up to one per slot: a quiet hour costs one task, not eight.
_BUNDLES_PER_TASK = 16


@flow(name="fleet-ingest")
def fleet_ingest(params: IngestParameters = IngestParameters()) -> dict:
    """Commit every acceptable pending bundle to its device's lineage; quarantine the rest with a reason."""
    start = time.perf_counter()
    inbox = inbox_location(params.store, params.inbox)
    before = catalog_heads.submit(params.store)  # read before any lineage document of this run is written
    slots = pending_batches(inbox, params.batches)
    before = before.result()
    futures = [ingest_slots.submit(params.store, inbox, group) for group in spread(slots, _BUNDLES_PER_TASK)]
    results = [future.result() for future in futures]
    outcomes = [outcome for done, _ in results for outcome in done]
    entries = {name: head for _, indexed in results for name, head in indexed.items()}
    if entries:
        publish_heads(params.store, before, entries)
    seconds = time.perf_counter() - start
    swept = sweep(inbox, params.grace_hours, params.quarantine_days)
    report = {"counts": dict(Counter(o["status"] for o in outcomes)), "bytes": sum(o["nbytes"] for o in outcomes),
              "seconds": seconds, "swept": swept, "quarantined": [o for o in outcomes if o["status"] == "quarantined"]}
    create_markdown_artifact(_markdown(report), key="fleet-ingest", description=f"Ingest into {params.store}")
    get_run_logger().info("ingested %s in %.1f s", report["counts"], report["seconds"])
    return report


def _markdown(report: dict) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report["counts"].items())) or "no bundles waiting"
    rows = "\n".join(f"| `{o['device']}` | `{o['key'].rsplit('/', 1)[-1][:12]}` | {o['reason']} |" for o in report["quarantined"])
    table = f"\n\n| device | bundle | reason |\n|---|---|---|\n{rows}\n" if rows else "\n"
    swept = report["swept"]
    return (f"## Fleet ingest\n\n- {counts}; {report['bytes']:,} bytes of bundles read in {report['seconds']:.1f} s\n"
            f"- inbox swept: {swept['unfinished']} unfinished upload(s), {swept['quarantined']} expired quarantine file(s), "
            f"{swept['nbytes']:,} bytes{table}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: one ingest run, its report as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--inbox", default=None, help="default: STORE-inbox")
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args(argv)
    with local_run_settings():
        print(json.dumps(fleet_ingest(IngestParameters(store=args.store, inbox=args.inbox, batches=args.batches))))


if __name__ == "__main__":
    main()
