"""The `mmstore gc`, `prune` and `compact` commands: keeping a store small over years."""

from __future__ import annotations

import argparse
import re
from typing import Any

from .cli_output import emit as _emit
from .errors import MMStoreError
from .retention import RetentionPolicy
from .store import Store

__all__ = ["register", "cmd_gc", "cmd_prune", "cmd_compact"]


def cmd_gc(store: Store, args: argparse.Namespace) -> None:
    """Remove blobs no set references, stale temporary files and unfinished uploads older than the grace period."""
    report = store.collect_garbage(_duration(args.grace), dry_run=args.dry_run)
    data = {"dry_run": report.dry_run, "blobs": report.blobs, "blob_bytes": report.blob_bytes,
            "temp_files": report.temp_files, "temp_bytes": report.temp_bytes, "uploads": report.uploads,
            "restored": report.restored, "kept_within_grace": report.young, "freed": report.freed}
    verb = "would free" if report.dry_run else "freed"
    _emit(args, data, lambda d: print(
        f"{verb} {d['freed']} bytes: {d['blobs']} blob(s), {d['temp_files']} temporary file(s), "
        f"{d['uploads']} unfinished upload(s); {d['kept_within_grace']} unreferenced blob(s) kept within the grace period"
    ))


def cmd_prune(store: Store, args: argparse.Namespace) -> None:
    """Remove the sets of a lineage a retention policy does not keep (re-basing kept ones first), then collect garbage."""
    policy = RetentionPolicy(keep_last=args.keep_last, keep_daily=args.keep_daily, keep_weekly=args.keep_weekly,
                             keep_monthly=args.keep_monthly, keep_yearly=args.keep_yearly,
                             keep_within=_duration(args.keep_within, "--keep-within"))
    if policy.empty:
        raise MMStoreError("prune needs a policy: give at least one of --keep-last, --keep-within, --keep-daily, "
                           "--keep-weekly, --keep-monthly or --keep-yearly")
    report = store.prune(args.lineage, policy, dry_run=args.dry_run, grace=_duration(args.grace))
    data = {"lineage": report.lineage, "dry_run": report.dry_run, "kept": report.kept, "removed": report.removed,
            "rebased": report.rebased, "in_use": report.in_use, "freed": None if report.dry_run else report.freed}
    _emit(args, data, lambda d: _print_prune(store, d))


def _print_prune(store: Store, d: dict[str, Any]) -> None:
    if d["dry_run"]:
        for verb, ids in (("keep", d["kept"]), ("re-base", list(d["rebased"])), ("remove", d["removed"])):
            for set_id in ids:
                print(f"would {verb:8} {set_id[:12]}  {store.info(set_id).created[:19].replace('T', ' ')}")
        print(f"would remove {len(d['removed'])} set(s) of lineage {d['lineage']!r}, re-base {len(d['rebased'])} "
              f"and keep {len(d['kept'])}")
        return
    refused = f"; {len(d['in_use'])} kept because sets derived from them meanwhile" if d["in_use"] else ""
    print(f"removed {len(d['removed']) - len(d['in_use'])} set(s) of lineage {d['lineage']!r}, re-based "
          f"{len(d['rebased'])}, kept {len(d['kept'])}{refused}; freed {d['freed']} bytes")


def cmd_compact(store: Store, args: argparse.Namespace) -> None:
    """Snapshot the sets of a lineage that are too many steps from a snapshot, so each recovers within the limit."""
    report = store.compact(args.lineage, args.max_depth, dry_run=args.dry_run)
    data = {"lineage": report.lineage, "dry_run": report.dry_run, "max_depth": report.max_depth, "rebased": report.rebased}
    _emit(args, data, lambda d: print(
        f"{'would snapshot' if d['dry_run'] else 'snapshotted'} {len(d['rebased'])} set(s) of lineage {d['lineage']!r}"
        + "".join(f"\n  {old[:12]} -> {new[:12] if new else '(snapshot)'}" for old, new in d["rebased"].items())
        + ("" if d["dry_run"] or not d["rebased"] else "\n`mmstore gc` frees what the old versions no longer need")
    ))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(text: str, flag: str = "--grace") -> float:
    """Seconds from `90`, `90s`, `30m`, `24h`, `14d` or `2w`."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if not match:
        raise MMStoreError(f"{flag} {text!r} is not a duration; give e.g. 0, 90s, 30m, 24h, 14d or 2w")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 0")
    return int(text)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `gc`, `prune` and `compact` to the `mmstore` command's subcommands."""
    gc = sub.add_parser("gc", help=cmd_gc.__doc__, description=cmd_gc.__doc__, parents=[common])
    gc.add_argument("--grace", default="24h", help="only what is older than this (default: %(default)s; e.g. 0, 30m, 14d)")
    gc.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    gc.set_defaults(func=cmd_gc)
    for name, func in (("prune", cmd_prune), ("compact", cmd_compact)):
        p = sub.add_parser(name, help=func.__doc__, description=func.__doc__, parents=[common])
        p.add_argument("lineage", help="lineage name")
        p.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
        p.set_defaults(func=func)
    prune = sub.choices["prune"]
    for period in ("last", "daily", "weekly", "monthly", "yearly"):
        prune.add_argument(f"--keep-{period}", type=_count, default=0, metavar="N",
                           help=f"keep the newest set{' of each of the last N periods' if period != 'last' else 's'} "
                           f"({period}; the head is always kept)")
    prune.add_argument("--keep-within", default="0", metavar="DURATION",
                       help="keep every set this much older than the newest or younger (e.g. 30d)")
    prune.add_argument("--grace", default="24h", help="garbage collection afterwards: only what is older than this "
                       "(default: %(default)s)")
    sub.choices["compact"].add_argument(
        "--max-depth", type=_count, metavar="N",
        help="most steps from a snapshot (default: MMSTORE_MAX_CHAIN_DEPTH for update, MMSTORE_MAX_REPLAY_DEPTH for provenance)")
