"""The `mmstore fleet` commands: list lineages, find what changed, find a lineage's version at a time, rebuild."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from .catalog import Catalog, Head, to_time
from .store import Store

__all__ = ["register", "cmd_fleet_ls", "cmd_fleet_changed", "cmd_fleet_at", "cmd_fleet_rebuild"]


def _rows(heads: dict[str, Head]) -> list[dict[str, Any]]:
    return [{"lineage": name, **head.model_dump()} for name, head in heads.items()]


def _emit(args: argparse.Namespace, data: Any, text: str | None = None) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    elif text is not None:
        print(text)
    else:
        table = Table("lineage", "head", "time", "versions", box=None, header_style="bold")
        for row in data["lineages"]:
            table.add_row(row["lineage"], row["head"][:12], row["time"][:19].replace("T", " "), str(row["versions"]))
        Console().print(table)


def cmd_fleet_ls(store: Store, args: argparse.Namespace) -> None:
    """List every catalogued lineage with its newest version (from the catalog: as fresh as its last update)."""
    _emit(args, {"lineages": _rows(Catalog(store).heads(args.match, verify=args.verify))})


def cmd_fleet_changed(store: Store, args: argparse.Namespace) -> None:
    """List the lineages with a version newer than --since."""
    _emit(args, {"since": to_time(args.since), "lineages": _rows(Catalog(store).changed_since(args.since, args.match))})


def cmd_fleet_at(store: Store, args: argparse.Namespace) -> None:
    """Show the version a lineage held at --time: its newest version at or before that time."""
    version = Catalog(store).at(args.lineage, args.time)
    data = {"lineage": version.lineage, "id": version.id, "time": version.time, "asked": to_time(args.time)}
    _emit(args, data, f"{version.id}  {version.lineage} version of {version.time}")


def cmd_fleet_rebuild(store: Store, args: argparse.Namespace) -> None:
    """Rebuild the fleet catalog from the store's refs and manifests."""
    names = Catalog(store).rebuild()
    _emit(args, {"lineages": names}, f"catalogued {len(names)} lineage(s)")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `fleet ls`, `fleet changed`, `fleet at` and `fleet rebuild` to the `mmstore` command."""
    fleet = sub.add_parser("fleet", help="query the fleet catalog: lineages, changes, versions at a time",
                           parents=[common])
    commands = fleet.add_subparsers(dest="fleet_command", required=True)
    times = "ISO-8601, e.g. 2026-11-25T14:00:00Z; without a zone: UTC"

    def add(name: str, func: Any) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=func.__doc__, description=func.__doc__, parents=[common])
        parser.set_defaults(func=func)
        return parser

    ls = add("ls", cmd_fleet_ls)
    ls.add_argument("--match", default="*", help="only lineages whose name matches this glob (default: all)")
    ls.add_argument("--verify", action="store_true", help="check every head against its manifest (2 requests each)")
    changed = add("changed", cmd_fleet_changed)
    changed.add_argument("--since", required=True, help=f"the time ({times})")
    changed.add_argument("--match", default="*", help="only lineages whose name matches this glob (default: all)")
    at = add("at", cmd_fleet_at)
    at.add_argument("lineage", help="the lineage (device) name")
    at.add_argument("--time", required=True, help=f"the time ({times})")
    add("rebuild", cmd_fleet_rebuild)
