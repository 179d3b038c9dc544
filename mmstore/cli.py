"""The `mmstore` command: inspect, verify and export the sets of a store."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from . import device_cli, fleet_cli, lifecycle_cli, probe_cli
from .cli_output import emit as _emit
from .errors import MMStoreError, NotFoundError
from .plugins import EXECUTORS
from .settings import Settings
from .store import SetInfo, Store

__all__ = ["main"]

_err = Console(stderr=True)


def progress(items: Sequence[Any], label: str) -> Iterable[Any]:
    """Iterate over `items` showing a progress bar on stderr."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # Only on a terminal: elsewhere a bar is noise, and an interrupted one leaves a blank line before the error.
    with Progress(*columns, console=_err, transient=True, disable=len(items) < 2 or not _err.is_terminal) as bar:
        yield from bar.track(items, total=len(items))


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
    repaired = _repair(store, args)
    if not args.set:
        store.verify_lineages()
        store.verify_aliases()
    for set_id in progress(ids, "verifying"):
        store.verify(set_id)
    orphans = store.unreferenced()
    data = {"verified": ids, "repaired": repaired, "unreferenced_blobs": orphans.blobs, "unreferenced_bytes": orphans.freed}
    _emit(args, data, lambda d: print(
        f"ok: {len(d['verified'])} set(s) verified ({len(d['repaired'])} blob(s) repaired); "
        f"{d['unreferenced_blobs']} unreferenced blob(s), "
        f"{d['unreferenced_bytes']} bytes unreferenced (`mmstore gc` removes them after the grace period)"
    ))


def _repair(store: Store, args: argparse.Namespace) -> list[str]:
    if not args.repair:
        return []
    if not args.source:
        raise MMStoreError("--repair needs --from URL: a store (a backup or a replica) holding healthy copies")
    return store.repair(Store.open(args.source, store.settings), args.set)


def cmd_du(store: Store, args: argparse.Namespace) -> None:
    """Show what each set adds to the store."""
    sizes = store.sizes()
    rows = [{"short": i.id[:12], "id": i.id, "approach": i.approach, "bytes": sizes[i.id]} for i in store.list()]
    unreferenced = store.unreferenced().freed
    data = {"sets": rows, "total": sum(r["bytes"] for r in rows), "unreferenced": unreferenced}
    _emit(args, data, lambda d: (_table(d["sets"], ["short", "approach", "bytes"]), print(
        f"total {d['total']} bytes in sets; {d['unreferenced']} bytes unreferenced (`mmstore gc` removes them)"
    )))


def cmd_export(store: Store, args: argparse.Namespace) -> None:
    """Write one .safetensors file per model of a set."""
    from .export import check_out_dir, export_safetensors

    models = _models(args.models)
    check_out_dir(args.out)
    set_id = store.resolve(args.set)
    # Only provenance sets replay; they build the executor the name registers (`mmstore.executors`).
    model_set = store.recover(set_id, models, executor=args.executor)
    paths = export_safetensors(model_set, args.out, set_id, models, lambda items: progress(items, "exporting"))
    _emit(args, {"set": set_id, "files": paths}, lambda d: print(f"wrote {len(d['files'])} files to {args.out}"))


_INDICES = re.compile(r"[0-9]+(?:,[0-9]+)*")


def _models(text: str | None) -> list[int] | None:
    if text is None:
        return None
    compact = text.replace(" ", "")
    if not _INDICES.fullmatch(compact):
        raise MMStoreError(f"--models {text!r} is invalid; give model indices separated by commas, e.g. --models 0,5,17")
    return [int(part) for part in compact.split(",")]


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The argument parser of the `mmstore` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of a failure")
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
    verify = sub.choices["verify"]
    verify.add_argument("--repair", action="store_true", help="rewrite damaged or missing blobs from the store given by --from")
    verify.add_argument("--from", dest="source", help="a store with healthy copies (a backup or a replica)")
    lifecycle_cli.register(sub, common)
    export = sub.choices["export"]
    export.add_argument("--out", required=True, help="directory to write the files into")
    export.add_argument("--models", help="comma-separated model indices (default: all)")
    export.add_argument("--executor", choices=EXECUTORS.names(), default=settings.replay_executor,
                        help="where provenance replays run (auto: here if this environment is compatible with the "
                        "recorded one, else in the pinned image the set was trained in)")
    probe_cli.register(sub, common)
    fleet_cli.register(sub, common)
    device_cli.register(sub, common)
    return parser


def _local_path(url: str) -> str | None:
    if url.startswith("file://"):
        return url.removeprefix("file://")
    return None if "://" in url else url


def _open_store(url: str, settings: Settings) -> Store:
    # Reading never creates a store: a missing local directory is a mistyped path or an unset MMSTORE_STORE.
    path = _local_path(url)
    if path is not None and not os.path.exists(path):
        raise NotFoundError(f"no store at {url}; pass --store URL or set MMSTORE_STORE")
    return Store.open(url, settings)


def _settings_problem(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        fields = "; ".join(f"MMSTORE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        return f"invalid settings ({fields}); correct or unset those environment variables"
    return f"invalid MMSTORE_* settings ({exc}); correct or unset those environment variables"


def _fail(message: str, code: int) -> int:
    # Exactly one line, printed literally: a message may quote stored text holding newlines or rich markup.
    line = " ".join(message.split())
    _err.print(Text.assemble(("error:", "red"), " ", line), soft_wrap=True, highlight=False)
    return code


def _run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        args.func(_open_store(args.store, settings), args)
    except MMStoreError as exc:
        if args.debug:
            raise
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        # Whoever read the output went away (`| head`); silence the flush at exit that would fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # a bug: say so in one line, keep the traceback for --debug
        if args.debug:
            raise
        return _fail(f"internal error: {type(exc).__name__}: {exc}; rerun with --debug and report it", 2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (1: a failure to act on, 2: a usage error or a bug)."""
    try:
        settings = Settings()
    except ValueError as exc:
        return _fail(_settings_problem(exc), 1)
    args = build_parser(settings).parse_args(argv)
    args.json = getattr(args, "json", False)
    args.debug = getattr(args, "debug", False)
    return _run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
