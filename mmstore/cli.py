"""The `mmstore` command: inspect, verify and export the sets of a store."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import probe_cli
from .arch import import_trusted
from .errors import MMStoreError
from .settings import Settings
from .store import SetInfo, Store

__all__ = ["main"]

_err = Console(stderr=True)


def progress(items: Sequence[Any], label: str) -> Iterable[Any]:
    """Iterate over `items` showing a progress bar on stderr."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_err, transient=True, disable=len(items) < 2) as bar:
        yield from bar.track(items, total=len(items))


def _emit(args: argparse.Namespace, data: Any, render: Callable[[Any], None]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        render(data)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "" if value is None else str(value)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(*columns, box=None, header_style="bold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    Console().print(table)


def _summary(info: SetInfo, lineages: dict[str, str]) -> dict[str, Any]:
    heads = [name for name, sid in lineages.items() if sid == info.id]
    return {**info.model_dump(), "short": info.id[:12], "heads": heads, "when": info.created[:19].replace("T", " ")}


def cmd_ls(store: Store, args: argparse.Namespace) -> None:
    """List every set, oldest first."""
    lineages = store.lineages()
    rows = [_summary(info, lineages) for info in store.list()]
    _emit(args, {"sets": rows, "lineages": lineages},
          lambda d: _table(d["sets"], ["short", "when", "approach", "n_models", "lineage", "heads"]))


def cmd_show(store: Store, args: argparse.Namespace) -> None:
    """Show one set's manifest and size."""
    set_id = store.resolve(args.set)
    data = {"id": set_id, "size": store.size(set_id), "manifest": store.manifest(set_id).model_dump(mode="json")}
    _emit(args, data, lambda d: Console().print_json(json.dumps(d)))


def cmd_log(store: Store, args: argparse.Namespace) -> None:
    """Show the chain from a set down to its root."""
    lineages = store.lineages()
    rows = [_summary(info, lineages) for info in store.log(args.set)]
    _emit(args, {"log": rows}, lambda d: _table(d["log"], ["short", "when", "approach", "n_models", "heads"]))


def cmd_verify(store: Store, args: argparse.Namespace) -> None:
    """Read and check every byte of one set or of all sets."""
    ids = [store.resolve(args.set)] if args.set else [info.id for info in store.list()]
    for set_id in progress(ids, "verifying"):
        store.verify(set_id)
    _emit(args, {"verified": ids}, lambda d: print(f"ok: {len(d['verified'])} set(s) verified"))


def cmd_du(store: Store, args: argparse.Namespace) -> None:
    """Show what each set adds to the store."""
    rows = [{"short": i.id[:12], "id": i.id, "approach": i.approach, "bytes": store.size(i.id)} for i in store.list()]
    data = {"sets": rows, "total": sum(r["bytes"] for r in rows)}
    _emit(args, data, lambda d: (_table(d["sets"], ["short", "approach", "bytes"]), print(f"total {d['total']} bytes")))


def cmd_export(store: Store, args: argparse.Namespace) -> None:
    """Write one .safetensors file per model of a set."""
    from .export import export_safetensors

    set_id = store.resolve(args.set)
    models = [int(x) for x in args.models.split(",")] if args.models else None
    model_set = store.recover(set_id, models, executor=_executor(store, set_id, args.executor))
    paths = export_safetensors(model_set, args.out, set_id, models, lambda items: progress(items, "exporting"))
    _emit(args, {"set": set_id, "files": paths}, lambda d: print(f"wrote {len(d['files'])} files to {args.out}"))


def _executor(store: Store, set_id: str, name: str) -> Any:
    # Only replays need an executor; the chooser is an import path resolved through the allow-list.
    if store.manifest(set_id).approach != "provenance":
        return None
    choose = import_trusted(store.settings.executor_chooser, store.settings.allowed_prefixes(), "executor chooser")
    return choose(name, store, set_id)


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The argument parser of the `mmstore` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    parser = argparse.ArgumentParser(prog="mmstore", description=__doc__, parents=[common])
    parser.add_argument("--store", default=settings.store, help="store URL (default: $MMSTORE_STORE or %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, arg in [
        ("ls", cmd_ls, None), ("show", cmd_show, "set"), ("log", cmd_log, "set"),
        ("verify", cmd_verify, "set?"), ("du", cmd_du, None), ("export", cmd_export, "set"),
    ]:
        p = sub.add_parser(name, help=func.__doc__, description=func.__doc__, parents=[common])
        if arg:
            p.add_argument("set", nargs="?" if arg.endswith("?") else None, help="set id, id prefix or lineage")
        p.set_defaults(func=func)
    export = sub.choices["export"]
    export.add_argument("--out", required=True, help="directory to write the files into")
    export.add_argument("--models", help="comma-separated model indices (default: all)")
    export.add_argument("--executor", choices=("auto", "local", "docker", "in-process"), default="auto",
                        help="where provenance replays run (auto: here if this environment is compatible with the "
                        "recorded one, else in the pinned image the set was trained in)")
    probe_cli.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    settings = Settings()
    args = build_parser(settings).parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        if "://" not in args.store and args.command != "ls" and not os.path.isdir(args.store):
            raise MMStoreError(f"no store at {args.store}; pass --store URL or set MMSTORE_STORE")
        args.func(Store.open(args.store, settings), args)
    except MMStoreError as exc:
        _err.print(f"[red]error:[/red] {exc}", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
