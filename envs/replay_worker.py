"""Replay inside a container: `python -m envs.replay_worker WORKDIR` trains the jobs written there.

The host and the container exchange plain files, never pickles: `task.json` (architecture,
layout, trainer, allow-list, the group sizes and thread count of a grouped replay, and per job its
model index, recipe and dataset span), `rows.npy`
(the starting rows), `datasets.bin` (every dataset's bytes, end to end). The worker writes the
trained rows to `out/rows.npy`.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmstore.arch import ArchSpec
from mmstore.errors import MMStoreError
from mmstore.layout import Layout
from mmstore.replay import ReplayJob, ReplayTask, run_jobs

__all__ = ["write_work", "read_work", "read_result", "main", "RESULT"]

RESULT = Path("out") / "rows.npy"


def write_work(workdir: Path, task: ReplayTask, jobs: Sequence[ReplayJob]) -> None:
    """Write `task` and `jobs` as the files a worker reads; `workdir/out` is left for the result."""
    spans, offset = [], 0
    for job in jobs:
        spans.append([offset, len(job.dataset)])
        offset += len(job.dataset)
    doc = {
        "arch": task.arch.model_dump(mode="json"), "layout": task.layout.model_dump(mode="json"),
        "trainer": task.trainer, "trusted": list(task.trusted), "groups": list(task.groups), "threads": task.threads,
        "jobs": [{"model": job.model, "recipe": job.recipe, "dataset": span} for job, span in zip(jobs, spans)],
    }
    (workdir / "task.json").write_text(json.dumps(doc))
    rows = np.stack([job.row for job in jobs]) if jobs else np.empty((0, task.layout.row_nbytes), np.uint8)
    np.save(workdir / "rows.npy", rows, allow_pickle=False)
    with open(workdir / "datasets.bin", "wb") as out:
        for job in jobs:
            out.write(job.dataset)
    (workdir / RESULT.parent).mkdir(exist_ok=True)


def read_work(workdir: Path) -> tuple[ReplayTask, list[ReplayJob]]:
    """The task and jobs `write_work` wrote into `workdir`."""
    doc = json.loads((workdir / "task.json").read_text())
    task = ReplayTask(ArchSpec.model_validate(doc["arch"]), Layout.model_validate(doc["layout"]),
                      doc["trainer"], tuple(doc["trusted"]), tuple(doc["groups"]), doc["threads"])
    rows = np.load(workdir / "rows.npy", allow_pickle=False)
    data = (workdir / "datasets.bin").read_bytes()
    jobs = [ReplayJob(j["model"], row, data[j["dataset"][0] : sum(j["dataset"])], j["recipe"])
            for j, row in zip(doc["jobs"], rows)]
    return task, jobs


def read_result(workdir: Path, task: ReplayTask, count: int) -> np.ndarray:
    """The trained rows a worker wrote, checked for shape and type (their bits are checked by the caller).

    The container could write anything there: a link, a FIFO, a header claiming a huge array. Only a
    regular file holding exactly `count` rows is read, into an array of the size the caller expects.
    """
    path = workdir / RESULT
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MMStoreError(f"the replay worker wrote no result at {path}; run it again and read its log") from None
    except OSError as exc:
        raise MMStoreError(f"the replay worker's result {path} cannot be opened ({exc.strerror}); it is broken") from None
    with os.fdopen(fd, "rb") as file:
        rows = np.empty((count, task.layout.row_nbytes), np.uint8)
        if not stat.S_ISREG(os.fstat(fd).st_mode) or _header(file) != (rows.shape, False, rows.dtype) or \
                file.readinto(memoryview(rows).cast("B")) != rows.nbytes or file.read(1):
            raise MMStoreError(f"the replay worker's result is not a uint8 array of {rows.shape} rows; it is broken")
    return rows


def _header(file) -> tuple | None:
    """The shape, order and dtype a `.npy` header declares; None if it is not a header numpy writes."""
    try:
        version = np.lib.format.read_magic(file)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        return read(file)
    except (ValueError, KeyError, OSError):
        return None


def _train(task: ReplayTask, jobs: list[ReplayJob], workers: int) -> np.ndarray:
    if workers > 1:
        # The image was chosen by fingerprint already; here only the bit-exact check guards.
        from envs.executors import LocalExecutor, shutdown

        try:
            return LocalExecutor(workers, force=True).replay(task, jobs)
        finally:
            shutdown()
    import torch

    # As in local worker processes: save-time training runs with one thread per model.
    torch.set_num_threads(1)
    return run_jobs(task, jobs)


def main(argv: Sequence[str] | None = None) -> int:
    """Train the jobs in the work directory given as the first argument (then, optionally, the worker count)."""
    args = list(sys.argv[1:] if argv is None else argv)
    workdir = Path(args[0])
    task, jobs = read_work(workdir)
    rows = _train(task, jobs, int(args[1]) if len(args) > 1 else 1)
    np.save(workdir / RESULT, np.ascontiguousarray(rows, dtype=np.uint8), allow_pickle=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
