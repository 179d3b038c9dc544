"""How `mmstore` commands print their results: JSON with `--json`, else a rendering for people."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

__all__ = ["emit"]


def emit(args: argparse.Namespace, data: Any, render: Callable[[Any], None]) -> None:
    """Print `data` as JSON if `--json` was given, else call `render` with it."""
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        render(data)
