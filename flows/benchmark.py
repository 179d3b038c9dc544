"""Flow: the paper's evaluation (`bench.evaluation`): a task per variant's sequence, per approach, per study.

Tasks run one after another (never concurrently), so that no measurement shares the machine with another.
Run: `python -m flows.benchmark [--models N] [--repeats K] [--variant ...]` (the same options as the bench).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from pydantic import BaseModel, Field

from bench.common import scratch_dir
from envs.executors import shutdown
from bench.eval_run import measure, subjects
from bench.eval_sequence import VARIANTS, Sequence, load_sequence
from bench.evaluation import finish_variant, parse, replay_study, repeats_for, run_tag, write_all, DEFAULT

__all__ = ["benchmark", "BenchmarkParameters"]


class BenchmarkParameters(BaseModel):
    """What the evaluation runs: its size and its variants."""

    models: int = Field(5000, ge=10, description="Models per set (the paper: 5,000)")
    repeats: int = Field(5, ge=1, description="Timed runs per measurement; the median is reported")
    variants: list[str] = Field(list(VARIANTS), description=f"Any of {', '.join(VARIANTS)}")
    comparator_repeats: int = Field(1, ge=1, description="Per-model comparator runs outside the default variant")
    replay_cells: int = Field(50, ge=1, description="Models replayed with the realistic recipe")


# Inputs hold hundreds of MB of parameters: hashing them for a cache key would cost more than it saves.
@task(name="sequence", cache_policy=NONE)
def sequence(variant: str, models: int) -> tuple[Sequence, float]:
    """The variant's cached sets U1..U3-3 (generated on first use) and the seconds generation took."""
    return load_sequence(VARIANTS[variant], models)


@task(name="measure", task_run_name="measure-{variant}-{approach}", cache_policy=NONE)
def measure_approach(seq: Sequence, variant: str, approach: str, root: Path, repeats: int) -> dict[str, Any]:
    """Storage and median save / recover times of one approach over the sequence."""
    subject = next(s for s in subjects(seq) if s.name == approach)
    return measure(subject, root, repeats)


@task(name="replay-study", cache_policy=NONE)
def replay(seq: Sequence, root: Path, repeats: int, cells: int) -> dict[str, Any]:
    """Provenance recovery: 1 vs 2 workers, and the realistic recipe."""
    return replay_study(seq, root, repeats, cells)


@task(name="write-results", cache_policy=NONE)
def write(results: dict[str, Any], tag: str) -> list[str]:
    """Results JSON and CSV under docs/results/, figures under docs/figures/."""
    return [str(path) for path in write_all(results, tag)]


# Parameters are validated: deployments pass them as JSON, which validation turns into BenchmarkParameters.
@flow(name="benchmark")
def benchmark(params: BenchmarkParameters = BenchmarkParameters()) -> dict[str, Any]:
    """Run the paper's sequence for every variant and approach and write results and figures."""
    results: dict[str, Any] = {"models": params.models, "repeats": params.repeats, "command": "flows.benchmark",
                               "variants": {}}
    with scratch_dir("mmstore-eval-") as root:
        for variant in params.variants:
            seq, generation_s = sequence(variant, params.models)
            runs = {s.name: repeats_for(variant, s.name, params.repeats, params.comparator_repeats) for s in subjects(seq)}
            measured = {name: measure_approach(seq, variant, name, root, n) for name, n in runs.items()}
            results["variants"][variant] = finish_variant(seq, generation_s, measured, runs)
            if variant == DEFAULT:
                results["replay"] = replay(seq, root, params.repeats, params.replay_cells)
        shutdown()  # the replay worker processes kept across recoveries
    paths = write(results, run_tag(params.models, params.repeats))
    get_run_logger().info("wrote %s", ", ".join(paths))
    return results


if __name__ == "__main__":
    from flows import local_run_settings

    args = parse()
    variants = list(VARIANTS) if "all" in args.variant else args.variant
    with local_run_settings():
        benchmark(BenchmarkParameters(models=args.models, repeats=args.repeats, variants=variants,
                                      comparator_repeats=args.comparator_repeats, replay_cells=args.replay_cells))
