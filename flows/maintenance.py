"""Flow: weekly store maintenance — prune lineages, collect garbage, verify lineages and a sample of sets, report."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.params import MaintenanceParameters
from tasks.maintenance import collect_garbage, prune_lineages, verify_sample

__all__ = ["store_maintenance"]


@flow(name="store-maintenance")
def store_maintenance(params: MaintenanceParameters) -> dict:
    """Apply the retention policy, free what no set needs (older than the grace period), check that what is kept is whole."""
    pruned = prune_lineages(params.store, params.lineages, params.retention, params.dry_run)
    freed = collect_garbage(params.store, params.grace_hours * 3600, params.dry_run)
    checked = verify_sample(params.store, params.verify_sample, params.seed)
    report = {"store": params.store, "pruned": pruned, "gc": freed, "verified": checked["verified"], "sets": checked["sets"]}
    create_markdown_artifact(_markdown(report), key="store-maintenance", description=f"Maintenance of {params.store}")
    get_run_logger().info("freed %d bytes, verified %d of %d sets", freed["freed"], len(checked["verified"]), checked["sets"])
    return report


def _markdown(report: dict) -> str:
    gc = report["gc"]
    verb = "would free" if gc["dry_run"] else "freed"
    rows = "\n".join(f"| `{set_id[:12]}` | whole |" for set_id in report["verified"])
    return (
        f"## Store maintenance of `{report['store']}`\n\n{_pruned(report['pruned'], gc['dry_run'])}"
        f"- garbage collection {verb} **{gc['freed']:,} bytes**: {gc['blobs']} blob(s), "
        f"{gc['temp_files']} temporary file(s), {gc['uploads']} unfinished upload(s); "
        f"{gc['kept_within_grace']} unreferenced blob(s) younger than the grace period kept\n"
        f"- every lineage points at a valid set; **{len(report['verified'])} of {report['sets']}** sets verified "
        "byte for byte (every lineage head and a random sample)\n\n"
        f"| set | verified |\n|---|---|\n{rows}\n"
    )


def _pruned(pruned: list[dict], dry_run: bool) -> str:
    if not pruned:
        return "- retention: no policy given, every set kept\n"
    verb = "would remove" if dry_run else "removed"
    rows = "\n".join(f"| `{p['lineage']}` | {p['removed']} | {p['rebased']} | {p['kept']} |" for p in pruned)
    return (f"- retention {verb} **{sum(p['removed'] for p in pruned)} set(s)** of {len(pruned)} lineage(s)\n\n"
            f"| lineage | {verb} | re-based | kept |\n|---|---|---|---|\n{rows}\n\n")
