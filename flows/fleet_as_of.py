"""Flow: recover the fleet as of a time — every device's version then, joined into one set and saved."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.params import FleetAsOfParameters
from mmstore import NotFoundError
from mmstore.catalog import to_time
from tasks.catalog import join_sets, recover_joined, versions_at
from tasks.store import persist

__all__ = ["fleet_as_of"]


@flow(name="fleet-as-of")
def fleet_as_of(params: FleetAsOfParameters) -> dict:
    """Find each matching device's version at the time through the catalog, recover them in batches, save one set."""
    start, when = time.perf_counter(), to_time(params.time)
    found, absent = versions_at(params.store, params.match, when)
    if not found:
        raise NotFoundError(f"no lineage matching {params.match!r} held a version at {when}; give a later time or another glob")
    size = -(-len(found) // params.batches)
    chunks = [found[i:i + size] for i in range(0, len(found), size)]
    parts = [recover_joined.submit(params.store, [v["id"] for v in chunk]) for chunk in chunks]
    joined = join_sets([part.result() for part in parts])
    meta = {"fleet_as_of": when, "match": params.match, "versions": [[v["lineage"], v["id"]] for v in found]}
    saved = persist(params.store, joined, "update" if params.base else "baseline", params.base, params.lineage, meta)
    report = {"set": saved["id"], "time": when, "devices": len(found), "absent": absent, "models": len(joined),
              "bytes": saved["bytes"], "versions": found, "seconds": round(time.perf_counter() - start, 3)}
    create_markdown_artifact(_markdown(report), key="fleet-as-of", description=f"The fleet as of {when}")
    get_run_logger().info("saved %d devices (%d models) as of %s as %s", len(found), len(joined), when, saved["id"][:12])
    return report


def _markdown(report: dict) -> str:
    rows = "\n".join(f"| {v['lineage']} | `{v['id'][:12]}` | {v['time']} |" for v in report["versions"])
    absent = ", ".join(report["absent"]) or "none"
    return (
        f"## The fleet as of {report['time']}: set `{report['set'][:12]}`\n\n"
        f"- devices: **{report['devices']}** ({report['models']} models, {report['bytes']} bytes stored)\n"
        f"- devices without a version by then: {absent}\n- time: {report['seconds']} s\n\n"
        f"| device | version | trained |\n|---|---|---|\n{rows}\n"
    )
