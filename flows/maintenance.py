"""Flow: weekly store maintenance — collect garbage, verify lineages and a sample of sets, report."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.params import MaintenanceParameters
from tasks.maintenance import collect_garbage, verify_sample

__all__ = ["store_maintenance"]


@flow(name="store-maintenance")
def store_maintenance(params: MaintenanceParameters) -> dict:
    """Free what no set needs (older than the grace period) and check that what is kept is whole."""
    freed = collect_garbage(params.store, params.grace_hours * 3600, params.dry_run)
    checked = verify_sample(params.store, params.verify_sample, params.seed)
    report = {"store": params.store, "gc": freed, "verified": checked["verified"], "sets": checked["sets"]}
    create_markdown_artifact(_markdown(report), key="store-maintenance", description=f"Maintenance of {params.store}")
    get_run_logger().info("freed %d bytes, verified %d of %d sets", freed["freed"], len(checked["verified"]), checked["sets"])
    return report


def _markdown(report: dict) -> str:
    gc = report["gc"]
    verb = "would free" if gc["dry_run"] else "freed"
    rows = "\n".join(f"| `{set_id[:12]}` | whole |" for set_id in report["verified"])
    return (
        f"## Store maintenance of `{report['store']}`\n\n"
        f"- garbage collection {verb} **{gc['freed']:,} bytes**: {gc['blobs']} blob(s), "
        f"{gc['temp_files']} temporary file(s), {gc['uploads']} unfinished upload(s); "
        f"{gc['kept_within_grace']} unreferenced blob(s) younger than the grace period kept\n"
        f"- every lineage points at a valid set; **{len(report['verified'])} of {report['sets']}** sets verified "
        "byte for byte (every lineage head and a random sample)\n\n"
        f"| set | verified |\n|---|---|\n{rows}\n"
    )
