"""The paper's evaluation (Section 4, Figures 3-5): U1 -> U3 -> U3 -> U3 for every approach and a per-model comparator.

Run: `python -m bench.evaluation [--models 5000] [--repeats 5] [--variant ffnn48 ...]`; the 100,000-model
scale test and the S3 test run on their own with `--scale` / `--s3`. Sequences are generated once per
variant and size and cached in build/eval-cache/; results go to docs/results/evaluation*.json|csv and
the figures to docs/figures/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from envs.executors import shutdown

from . import plots
from .common import RESULTS, scratch_dir, write_csv, write_results
from .eval_permodel import NAME as COMPARATOR
from .eval_replay import realistic_recipe, worker_scaling
from .eval_run import measure, subjects
from .eval_scale import s3_test, scale_test
from .eval_sequence import USE_CASES, VARIANTS, Sequence, load_sequence

__all__ = ["describe", "repeats_for", "finish_variant", "replay_study", "run_sequence", "write_all", "csv_rows", "ratios",
           "run_tag", "main", "DEFAULT"]

FULL_SIZE = (5000, 5)
DEFAULT = "ffnn48"


def run_tag(models: int, repeats: int) -> str:
    """'' for the full-size run, else a suffix naming the reduced size (so reduced figures never pass for full ones)."""
    return "" if (models, repeats) == FULL_SIZE else f"-{models}m-{repeats}r"


def describe(seq: Sequence, generation_s: float) -> dict[str, Any]:
    """What a variant's figures are about: architecture, update rate, how U3 changed the models."""
    v = seq.variant
    return {
        "arch": v.arch, "parameters": seq.sets[0].layout.row_nbytes // 4, "update_rate": v.rate,
        "u3": "retrained" if v.trained else "simulated by perturbing parameters (no provenance replay)",
        "retrained_per_u3": [len(c) for c in seq.changes], "raw_bytes": seq.sets[0].nbytes,
        "generation_s": generation_s, "use_cases": list(USE_CASES),
    }


def repeats_for(variant: str, approach: str, repeats: int, comparator_repeats: int) -> int:
    """Timed runs of one approach in one variant.

    The comparator writes the same full snapshots whatever the update rate or model; its ~10,000
    fsynced files per set dominate the run, so outside the default variant it runs `comparator_repeats` times.
    """
    return comparator_repeats if approach == COMPARATOR and variant != DEFAULT else repeats


def finish_variant(seq: Sequence, generation_s: float, approaches: dict[str, dict], runs: dict[str, int]) -> dict[str, Any]:
    """A variant's results: its description, the measurements, their ratios to the comparator."""
    got = {**describe(seq, generation_s), "repeats": runs, "approaches": approaches}
    got["ratios_to_comparator"] = ratios(got)
    return got


def ratios(variant: dict[str, Any]) -> dict[str, dict[str, list[float | None]]]:
    """Each approach's storage, save and recover time divided by the comparator's, per use case."""
    ref = variant["approaches"][COMPARATOR]
    out = {}
    for name, got in variant["approaches"].items():
        out[name] = {key: [a / b if a is not None and b else None for a, b in zip(got[key], ref[key])]
                     for key in ("bytes", "save_s", "recover_s")}
    return out


def run_sequence(models: int, repeats: int, variants: list[str], replay_cells: int, comparator_repeats: int) -> dict[str, Any]:
    """Every requested variant, plus the provenance replay study on the default variant."""
    results: dict[str, Any] = {"variants": {}}
    with scratch_dir("mmstore-eval-") as root:
        for name in variants:
            started = time.perf_counter()
            seq, generation_s = load_sequence(VARIANTS[name], models)
            runs = {s.name: repeats_for(name, s.name, repeats, comparator_repeats) for s in subjects(seq)}
            measured = {s.name: measure(s, root, runs[s.name]) for s in subjects(seq)}
            results["variants"][name] = finish_variant(seq, generation_s, measured, runs)
            results["variants"][name]["wall_s"] = time.perf_counter() - started
            print_variant(name, results["variants"][name])
            if name == DEFAULT:
                results["replay"] = replay_study(seq, root, repeats, replay_cells)
    return results


def replay_study(seq: Sequence, root: Path, repeats: int, replay_cells: int) -> dict[str, Any]:
    """Provenance recovery with 1 vs 2 replay workers, and with the realistic recipe."""
    study = {"workers": worker_scaling(seq, root, repeats), "realistic": realistic_recipe(seq, root, replay_cells)}
    print(json.dumps(study, indent=1))
    return study


def write_all(results: dict[str, Any], tag: str) -> list[Path]:
    """Merge with earlier variants of the same size, write JSON, CSV and figures; returns the paths."""
    results = _merge(f"evaluation{tag}", results)
    paths = [write_results(f"evaluation{tag}", results), write_csv(f"evaluation{tag}", csv_rows(results))]
    return paths + plots.plot_all(results, tag)


def csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant, approach and use case."""
    rows = []
    for variant, got in results["variants"].items():
        for approach, m in got["approaches"].items():
            for k, use_case in enumerate(got["use_cases"]):
                rows.append({"variant": variant, "approach": approach, "use_case": use_case, "bytes": m["bytes"][k],
                             "save_s": m["save_s"][k], "recover_s": m["recover_s"][k]})
    return rows


def print_variant(name: str, got: dict[str, Any]) -> None:
    """A compact table of one variant's figures."""
    print(f"{name}: {got['parameters']} parameters, {got['retrained_per_u3']} retrained per U3 ({got['u3']})")
    for approach, m in got["approaches"].items():
        cells = "  ".join(f"{uc} {b / 1e6:9.3f} MB {s:7.3f}s/{_fmt(r)}" for uc, b, s, r in
                          zip(got["use_cases"], m["bytes"], m["save_s"], m["recover_s"]))
        print(f"  {approach:10s} {cells}")


def _fmt(seconds: float | None) -> str:
    return "   n/a " if seconds is None else f"{seconds:7.3f}s"


def _merge(name: str, results: dict[str, Any]) -> dict[str, Any]:
    """Add this run's variants to those already recorded at the same size (variants can be run one by one)."""
    path = RESULTS / f"{name}.json"
    if path.exists():
        old = json.loads(path.read_text())
        results = {**old, **results, "variants": {**old.get("variants", {}), **results["variants"]}}
    results.pop("machine", None)
    return results


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=FULL_SIZE[0])
    parser.add_argument("--repeats", type=int, default=FULL_SIZE[1])
    parser.add_argument("--variant", nargs="+", choices=[*VARIANTS, "all"], default=["all"])
    parser.add_argument("--comparator-repeats", type=int, default=1, help="comparator runs outside the default variant")
    parser.add_argument("--replay-cells", type=int, default=50, help="models replayed with the realistic recipe")
    parser.add_argument("--scale", type=int, nargs="?", const=100_000, help="only the scale test (default 100,000 models)")
    parser.add_argument("--s3", action="store_true", help="only the S3 test (one run of the default sequence)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run what the command line asks for and write results and figures."""
    try:
        _run(parse(argv))
    finally:
        shutdown()  # the replay worker processes kept across recoveries


def _run(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    started, tag = time.perf_counter(), run_tag(args.models, args.repeats)
    command = {"command": " ".join(["python -m bench.evaluation", *sys.argv[1:]])}
    if args.scale:
        with scratch_dir("mmstore-eval-scale-") as root:
            report = scale_test(args.scale, root / "store")
        print(json.dumps(report, indent=1))
        write_results("evaluation-scale", {**command, **report})
    if args.s3:
        report = s3_test(load_sequence(VARIANTS["ffnn48"], args.models)[0])
        s3_tag = "" if args.models == FULL_SIZE[0] else f"-{args.models}m"
        write_results(f"evaluation-s3{s3_tag}", {**command, **report})
        plots.plot_s3(report, s3_tag)
    if args.scale or args.s3:
        return
    variants = list(VARIANTS) if "all" in args.variant else args.variant
    results = run_sequence(args.models, args.repeats, variants, args.replay_cells, args.comparator_repeats)
    header = {"models": args.models, "repeats": args.repeats, **command, "duration_s": time.perf_counter() - started}
    print("written:", ", ".join(str(p) for p in write_all({**header, **results}, tag)))


if __name__ == "__main__":
    main()
