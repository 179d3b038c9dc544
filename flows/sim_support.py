"""What the fleet simulation needs around it: a local S3 endpoint when none is configured, and its figures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["local_s3", "plot_report"]

_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def local_s3(*urls: str) -> Iterator[str | None]:
    """For s3:// URLs without AWS_ENDPOINT_URL: a moto S3 server on 127.0.0.1 holding their buckets, for the block."""
    buckets = sorted({url[len("s3://"):].split("/", 1)[0] for url in urls if url.startswith("s3://")})
    if not buckets or os.environ.get("AWS_ENDPOINT_URL"):
        yield os.environ.get("AWS_ENDPOINT_URL")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint, saved = f"http://127.0.0.1:{port}", {k: os.environ.get(k) for k in [*_CREDENTIALS, "AWS_ENDPOINT_URL"]}
    try:
        os.environ.update({**{k: os.environ.get(k) or v for k, v in _CREDENTIALS.items()}, "AWS_ENDPOINT_URL": endpoint})
        _wait_for(port, server)
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        for bucket in buckets:
            fs.mkdir(bucket)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _wait_for(port: int, server: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the local S3 server on port {port} did not start (is moto[server] installed?)")


def plot_report(report: dict, path: str) -> Path:
    """Bytes per device-day by what a device could send, and ingest progress over the run, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    per_day = report["bytes_per_device_day"]
    names = ["full", "provenance_data", "delta", "chosen"]
    left.bar(["whole\nmodels", "training\ndata", "changed\ntensors", "sent\n(cost model)"], [per_day[n] / 1e3 for n in names],
             color=["#999999", "#c98b2b", "#3b7dd8", "#2a9d5c"])
    left.set_ylabel("kB per device-day")
    left.set_title(f"What a device sends ({report['devices']} devices x {report['cells']} cells)")
    timeline = report["ingest_timeline"]
    pushed = [run["pushed"] for run in timeline]
    ingested, total = [], 0
    for run in timeline:
        total += run["counts"].get("committed", 0)
        ingested.append(total)
    right.plot(range(len(timeline)), pushed, label="pushed by devices")
    right.plot(range(len(timeline)), ingested, label="ingested")
    right.set_xlabel("ingest run")
    right.set_ylabel("bundles")
    right.set_title("Ingest keeps up with the devices")
    right.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
