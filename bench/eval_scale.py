"""Beyond the paper's sequence: 100,000 models in one set (peak memory), and the sequence on S3 (request counts).

The scale test runs in a fresh subprocess (`python -m bench.eval_scale N DIR`) so that its peak RSS
is that of one save and one recover, nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mmstore import ArchSpec, ModelSet, Store
from mmstore.digest import digest_bytes
from mmstore.layout import Layout
from workloads.models import FFNN48

from . import eval_permodel
from .common import timed
from .eval_run import StoreSubject
from .eval_sequence import USE_CASES, Sequence

__all__ = ["scale_test", "s3_test"]

BUCKET = "mmstore-eval"


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _child(n: int, directory: str) -> dict[str, Any]:
    """Generate n random FFNN-48 rows in place, save them, drop them, recover them; report times and peak RSS."""
    imported = _peak_rss()
    layout = Layout.of(FFNN48().state_dict())
    gen_s, values = timed(lambda: _random_rows(n, layout.row_nbytes // 4))
    model_set = ModelSet(ArchSpec.of(FFNN48), layout, values.view(np.uint8))
    digest = digest_bytes(model_set.data)
    save_s, set_id = timed(partial(_save, directory, model_set))
    del model_set, values
    recover_s, recovered = timed(lambda: Store.open(directory).recover(set_id))
    raw = recovered.nbytes
    return {"models": n, "raw_bytes": raw, "generate_s": gen_s, "save_s": save_s, "recover_s": recover_s,
            "bit_exact": digest_bytes(recovered.data) == digest, "rss_after_imports_bytes": imported,
            "peak_rss_bytes": _peak_rss(), "peak_rss_vs_raw": _peak_rss() / raw}


def _save(directory: str, model_set: ModelSet) -> str:
    return Store.open(directory).save(model_set)


def _random_rows(n: int, width: int) -> np.ndarray:
    # Drawn straight into the float32 buffer and scaled in place: no second copy of 2 GB.
    values = np.empty((n, width), dtype=np.float32)
    np.random.default_rng(0).standard_normal(dtype=np.float32, out=values)
    values *= 0.1
    return values


def scale_test(n: int, directory: Path) -> dict[str, Any]:
    """Run the scale test in a fresh interpreter and return its report."""
    out = subprocess.run([sys.executable, "-m", "bench.eval_scale", str(n), str(directory)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextmanager
def moto_s3() -> Iterator[dict[str, Any]]:
    """A moto S3 server on 127.0.0.1 (stopped afterwards) and the storage options to reach it."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
    finally:
        server.stop()


class RequestCounter:
    """Counts the HTTP requests an s3fs client sends (botocore's `before-send` event)."""

    def __init__(self, fs: Any):
        self.count = 0
        fs.connect()  # the client whose events we hook; the stores reuse this cached instance
        fs.s3.meta.events.register("before-send", self._seen)

    def _seen(self, **kwargs: Any) -> None:
        self.count += 1

    def measure(self, run: Any) -> tuple[float, int, Any]:
        """Seconds, requests sent and result of `run`."""
        before = self.count
        seconds, result = timed(run)
        return seconds, self.count - before, result


def _per_model_s3(seq: Sequence, fs: Any, counter: RequestCounter) -> list[dict[str, Any]]:
    rows = []
    for k, model_set in enumerate(seq.sets):
        prefix = f"{BUCKET}/per-model/set-{k}"
        objects = {f"{prefix}/{name}": data for name, data in eval_permodel.model_objects(model_set, f"set-{k}")}
        save_s, save_n, _ = counter.measure(lambda: fs.pipe(objects))
        recover_s, recover_n, _ = counter.measure(lambda: fs.cat(sorted(objects)))
        rows.append({"use_case": USE_CASES[k], "save_s": save_s, "save_requests": save_n,
                     "recover_s": recover_s, "recover_requests": recover_n})
    return rows


def _approach_s3(seq: Sequence, name: str, options: dict, counter: RequestCounter) -> list[dict[str, Any]]:
    url, subject, rows = f"s3://{BUCKET}/{name}", StoreSubject(name, seq, storage_options=options), []
    subject.prepare()
    for k in range(len(seq.sets)):
        save_s, save_n, set_id = counter.measure(lambda: subject.save(url, k))
        recover_s, recover_n, recovered = counter.measure(lambda: subject.recover(url, set_id, k))
        rows.append({"use_case": USE_CASES[k], "save_s": save_s, "save_requests": save_n,
                     "recover_s": recover_s if recovered is not None else None, "recover_requests": recover_n})
    return rows


def s3_test(seq: Sequence) -> dict[str, Any]:
    """The sequence on a local S3 endpoint: seconds and HTTP requests per save and recover, one run."""
    import s3fs

    with moto_s3() as options:
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir(BUCKET)
        counter = RequestCounter(fs)
        result = {"models": len(seq.sets[0]), "per-model": _per_model_s3(seq, fs, counter)}
        for name in ("baseline", "update", "provenance"):
            result[name] = _approach_s3(seq, name, options, counter)
        fs.clear_instance_cache()
    return result


if __name__ == "__main__":
    print(json.dumps(_child(int(sys.argv[1]), sys.argv[2])))
