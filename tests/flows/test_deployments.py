"""The deployments of prefect.yaml on a real Prefect server and process worker, and their Run form in the UI."""

from __future__ import annotations

import html
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

from flows.params import RecoverParameters
from mmstore import Store
from tests.conftest import make_s3_bucket
from tests.flows.fleets import initial_store

ROOT = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]
POOL = "mmstore-process"
RECOVER = "recover-model-set"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """Stop one process we started: ask, then insist."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _wait_healthy(api: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"prefect server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def _run(cmd: list[str], env: dict, timeout: float = 180) -> str:
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd[2:])} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` on a free port with its own home (a fresh SQLite database): (url, env)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home), "PREFECT_API_URL": f"{url}/api", "PWD": str(ROOT),
        "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The cron schedule of fleet-update must not start a retraining in the middle of the test.
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        # The worker polls every 15 s by default: most of a short test's waiting.
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    })
    log = home / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"{url}/api", process, log)
        yield url, env
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def worker(server, s3_endpoint, tmp_path_factory):
    """The process work pool, and `prefect worker start` on it, running flows from this checkout.

    The worker reaches the test S3 endpoint through AWS_* variables alone, as README's "Running with Prefect" says.
    """
    env = {**server[1], "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint}
    _run([*PREFECT, "work-pool", "create", POOL, "--type", "process"], env)
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log, "w") as out:
        process = subprocess.Popen([*PREFECT, "worker", "start", "--pool", POOL], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        yield log
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def deployments(server, worker) -> dict[str, dict]:
    """Every deployment of prefect.yaml, deployed while the worker starts: name -> deployment."""
    url, env = server
    _run([*PREFECT, "--no-prompt", "deploy", "--all"], env)
    response = httpx.post(f"{url}/api/deployments/filter", json={}, timeout=30)
    response.raise_for_status()
    return {d["name"]: d for d in response.json()}


def test_prefect_yaml_deploys_every_flow_to_the_process_pool(deployments):
    assert set(deployments) == {"fleet-update", "recover-model-set", "fleet-scenario", "store-maintenance", "fleet-as-of",
                                "fleet-ingest", "fleet-sim"}
    assert {d["work_pool_name"] for d in deployments.values()} == {POOL}
    crons = [s["schedule"].get("cron") for s in deployments["fleet-update"]["schedules"]]
    assert crons == ["0 2 * * *"]
    assert [s["schedule"].get("cron") for s in deployments["store-maintenance"]["schedules"]] == ["0 3 * * 0"]
    assert [s["schedule"].get("interval") for s in deployments["fleet-ingest"]["schedules"]] == [3600.0]
    fields = deployments[RECOVER]["parameter_openapi_schema"]["definitions"]["RecoverParameters"]["properties"]
    assert set(fields) == set(RecoverParameters.model_fields)


def test_recover_deployment_runs_on_the_worker(server, deployments, worker, s3_options, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, _ = server
    store_url, output = f"s3://{make_s3_bucket(s3_options)}/cells", tmp_path / "recovered"
    set_id, models = initial_store(store_url, **s3_options)
    params = {"store": store_url, "set": "fleet-0", "models": [3, 11], "output": str(output)}
    # As the UI's Run form does: create a flow run of the deployment and let the worker pick it up.
    with temporary_settings({PREFECT_API_URL: f"{url}/api"}):
        run = run_deployment(name=f"{RECOVER}/{RECOVER}", parameters={"params": params}, timeout=240, poll_interval=2)
    assert run.state is not None and run.state.is_completed(), f"{run.state}:\n{worker.read_text()[-4000:]}"
    assert sorted(p.name for p in output.iterdir()) == ["model-00003.safetensors", "model-00011.safetensors"]
    expected = Store.open(store_url, **s3_options).recover(set_id)
    assert expected.equals(models)
    for i in (3, 11):
        exported = load_file(output / f"model-{i:05d}.safetensors")
        assert exported.keys() == expected.state_dict(i).keys()
        assert all(torch.equal(exported[name], tensor) for name, tensor in expected.state_dict(i).items())


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when absent (CI machines run the tests as root)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("The UI test needs Chromium: install Debian's `chromium` package (apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        # A fresh machine may not know the package yet.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600, check=True)
        subprocess.run(install, env=env, capture_output=True, timeout=600, check=True)
    return shutil.which("chromium") or pytest.fail("apt-get installed chromium, but it is not on PATH")


def _headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium offline; virtual time lets the UI's JavaScript render before the dump."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--window-size=1280,1400"]
    return subprocess.run([chromium, *flags, *args], capture_output=True, text=True, timeout=120)


def test_run_form_shows_the_recover_parameters(server, deployments, chromium, tmp_path):
    url, _ = server
    page = f"{url}/deployments/deployment/{deployments[RECOVER]['id']}/run"
    dom = _headless(chromium, tmp_path / "profile", "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-3000:]
    text = html.unescape(re.sub(r"<[^>]+>", "\n", re.sub(r"<(script|style)\b.*?</\1>", "", dom.stdout, flags=re.S)))
    lines = {line.strip() for line in text.splitlines() if line.strip()}
    for name, field in RecoverParameters.model_fields.items():
        label = name.capitalize() + ("" if field.is_required() else " (Optional)")
        assert label in lines, f"the Run form has no field {label!r}"
        assert field.description in lines, f"the Run form does not describe {name!r}"
    shot = tmp_path / "run-form.png"
    assert _headless(chromium, tmp_path / "profile", f"--screenshot={shot}", page).returncode == 0
    assert shot.stat().st_size > 10_000
