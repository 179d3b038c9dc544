"""Replay in a pinned image on a real engine: train in the container, recover from the host, bit for bit."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

from envs.choice import auto_choice, choose, recorded_environment
from envs.docker_executor import (
    CONTAINER_USER, ContainerFailedError, ContainerTimeoutError, DockerExecutor, EngineUnreachableError,
    ImageNotFoundError, UntrustedImageError, connect, ensure_image, run_container,
)
from envs.image import image_repository
from envs.executors import LocalExecutor
from envs.fingerprint import capture
from mmstore import Settings, Store
from mmstore.cli import main
from mmstore.errors import EnvironmentMismatchError, MMStoreError, NotFoundError
from mmstore.groups import plan_groups
from mmstore.replay import ReplayJob, ReplayTask, run_jobs
from workloads.datasets import encode_arrays

from ..grouped_fleet import group_jobs, random_arrays
from ..provenance_fleet import RECIPES, TRAINER, initial_set, retrain
from .conftest import TIMINGS

PROJECT = Path(__file__).resolve().parents[2]
NOWHERE = "unix:///tmp/mmstore-no-engine.sock"
SETTINGS = Settings(trusted_modules=("tests",))
# What a confined container reports about itself, as JSON.
SELF_REPORT = """
import json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
def writes(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return 0
    except OSError as exc:
        return exc.errno
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                  "caps": [status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")],
                  "no_new_privs": status["NoNewPrivs"].strip(), "root": writes("/probe"), "etc": writes("/etc/probe"),
                  "tmp": writes("/tmp/probe"), "net": sorted(os.listdir("/sys/class/net"))}))
"""


def _jobs(count: int, recipe: dict | None = None) -> tuple[ReplayTask, list[ReplayJob]]:
    models = initial_set(count, seed=11)
    rng = np.random.default_rng(11)
    jobs = [ReplayJob(i, models.data[i], encode_arrays({"x": rng.standard_normal((32, 5), dtype=np.float32),
                                                        "y": rng.standard_normal((32, 1), dtype=np.float32)}),
                      recipe or RECIPES["full" if i % 2 else "partial"]) for i in range(count)]
    return ReplayTask(models.arch, models.layout, TRAINER, SETTINGS.allowed_prefixes()), jobs


def _with_image(image: str | None) -> bytes:
    return capture().model_copy(update={"image_digest": image}).to_json()


@pytest.fixture(scope="module")
def trained_in_image(tmp_path_factory, docker_client, replay_image):
    """A provenance fleet trained and saved inside the image; its store, datasets and expected rows."""
    root = tmp_path_factory.mktemp("trained")
    store, datasets, out = (root / name for name in ("store", "store-datasets", "out"))
    for folder in (store, datasets, out):
        folder.mkdir()
        folder.chmod(0o777)  # the container runs as an unprivileged user
    volumes = {str(p): {"bind": str(p), "mode": "rw"} for p in (store, datasets, out)}
    volumes[str(PROJECT / "tests")] = {"bind": "/opt/tests/tests", "mode": "ro"}
    command = ["python", "-m", "tests.envs.container_train", str(store), str(datasets), str(out)]
    run_container(docker_client, replay_image, command, volumes, {"PYTHONPATH": "/opt/mmstore:/opt/tests"}, 600)
    return store, datasets, np.load(out / "expected.npy", allow_pickle=False)


def test_training_in_the_image_records_its_digest(trained_in_image, replay_image, replay_settings):
    store = Store.open(str(trained_in_image[0]), replay_settings)
    recorded = recorded_environment(store, store.resolve("fleet"))
    assert recorded.image_digest == replay_image
    assert recorded.container and recorded.hostname != capture().hostname


def test_recovery_through_the_docker_executor_is_bit_exact(trained_in_image, dockerd, replay_image, replay_settings):
    store_dir, datasets, expected = trained_in_image
    store = Store.open(str(store_dir), replay_settings)
    executor = choose("docker", store, store.resolve("fleet"), docker_host=dockerd.address, read_only=[str(datasets)])
    assert isinstance(executor, DockerExecutor) and executor.image == replay_image
    assert store_dir.resolve() in executor.read_only
    recovered = store.recover("fleet", executor=executor)
    assert np.array_equal(recovered.data, expected)
    assert not np.array_equal(expected, initial_set(6, seed=3).data)


def test_cli_export_replays_in_the_image_when_asked(trained_in_image, dockerd, registry, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)
    monkeypatch.setenv("MMSTORE_REPLAY_IMAGES", image_repository(registry))
    out = tmp_path / "exported"
    argv = ["--store", str(trained_in_image[0]), "export", "fleet", "--out", str(out), "--executor", "docker"]
    assert main(argv) == 0
    assert len(list(out.glob("*.safetensors"))) == 6


def test_the_host_replays_the_image_bits_too(trained_in_image):
    store_dir, _, expected = trained_in_image
    recovered = Store.open(str(store_dir), SETTINGS).recover("fleet", executor=LocalExecutor(force=True))
    assert np.array_equal(recovered.data, expected)


def test_container_runs_offline_by_digest(docker_client, replay_image):
    code = "import os; from envs.fingerprint import capture; print(capture().image_digest, sorted(os.listdir('/sys/class/net')))"
    log = run_container(docker_client, replay_image, ["python", "-c", code], {}, {}, 120)
    assert log.split()[0] == replay_image and "['lo']" in log


def test_container_is_confined(docker_client, replay_image):
    report = json.loads(run_container(docker_client, replay_image, ["python", "-c", SELF_REPORT], {}, {}, 120))
    assert (report["uid"], report["gid"]) == CONTAINER_USER and report["groups"] in ([], [CONTAINER_USER[1]])
    assert report["caps"] == ["0000000000000000"] * 4 and report["no_new_privs"] == "1"
    assert report["root"] == report["etc"] == 30  # EROFS: the root file system is read-only
    assert report["tmp"] == 0 and report["net"] == ["lo"]


def test_an_image_entrypoint_never_wraps_the_command(docker_client, replay_image):
    dockerfile = f'FROM {replay_image}\nENTRYPOINT ["/bin/echo", "wrapped"]\n'.encode()
    wrapping, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag="mmstore-wrapping:test",
                                             network_mode="none", rm=True)
    try:
        log = run_container(docker_client, wrapping.id, ["python", "-c", "print('ours')"], {}, {}, 120)
    finally:
        docker_client.images.remove(wrapping.id, force=True)
    assert log.strip() == "ours"


def test_docker_executor_matches_local_replay_and_overhead(dockerd, replay_image, replay_settings):
    task, jobs = _jobs(4)
    executor = DockerExecutor(replay_image, docker_host=dockerd.address, force=True, settings=replay_settings)
    executor.check(_with_image(replay_image))
    start = time.perf_counter()
    in_container = executor.replay(task, jobs)
    TIMINGS["docker replay, 4 models"] = time.perf_counter() - start
    start = time.perf_counter()
    here = run_jobs(task, jobs)
    TIMINGS["in-process replay, 4 models"] = time.perf_counter() - start
    assert np.array_equal(in_container, here)
    print("\nreplay image timings (s):", {k: round(v, 2) for k, v in TIMINGS.items()})


def test_grouped_training_in_the_image_is_bit_identical_to_the_host(dockerd, replay_image, replay_settings):
    """Groups of a mixed full/partial cycle (one group of one), trained in a container from plain files, give the host's bits."""
    base = initial_set(7, seed=12)
    plan = {m: "full" if m < 4 else "partial" for m in range(7)}
    rng = np.random.default_rng(12)
    task, jobs = group_jobs(base, plan, {m: random_arrays(rng, 40) for m in plan}, plan_groups(plan, 2))
    assert task.groups == (2, 2, 1, 2)
    executor = DockerExecutor(replay_image, docker_host=dockerd.address, force=True, settings=replay_settings)
    executor.check(_with_image(replay_image))
    assert np.array_equal(executor.replay(task, jobs), run_jobs(task, jobs))


def test_unreachable_engine_says_what_to_do():
    with pytest.raises(EngineUnreachableError, match="start dockerd.*executor='local'"):
        connect(NOWHERE, timeout=5)
    settings = Settings(replay_images=("127.0.0.1:1/x",))
    executor = DockerExecutor("127.0.0.1:1/x@sha256:" + "0" * 64, docker_host=NOWHERE, settings=settings)
    with pytest.raises(EngineUnreachableError):
        executor.check(_with_image(executor.image))


def test_missing_image_is_reported(docker_client, registry):
    absent = f"{registry}/mmstore-replay@sha256:{'0' * 64}"
    with pytest.raises(ImageNotFoundError, match="make replay_image") as caught:
        ensure_image(docker_client, absent)
    assert isinstance(caught.value, NotFoundError)


def test_container_failure_carries_its_log_tail(dockerd, replay_image, replay_settings):
    task, jobs = _jobs(1, recipe={"epochs": "many"})
    executor = DockerExecutor(replay_image, docker_host=dockerd.address, force=True, settings=replay_settings)
    with pytest.raises(ContainerFailedError, match=r"exited with status 1(.|\n)*ValidationError(.|\n)*epochs"):
        executor.replay(task, jobs)


def test_timeout_stops_the_container(docker_client, dockerd, replay_image, replay_settings):
    task, jobs = _jobs(2)
    executor = DockerExecutor(replay_image, docker_host=dockerd.address, timeout=0.5, force=True, settings=replay_settings)
    with pytest.raises(ContainerTimeoutError, match="longer than 0.5 s"):
        executor.replay(task, jobs)
    assert docker_client.containers.list(all=True) == []


def test_check_refuses_another_image_and_unpinned_sets(replay_image, replay_settings):
    other = replay_image.split("@")[0] + "@sha256:" + "1" * 64
    executor = DockerExecutor(replay_image, docker_host=NOWHERE, settings=replay_settings)
    with pytest.raises(EnvironmentMismatchError, match="trained in the image"):
        executor.check(_with_image(other))
    with pytest.raises(EnvironmentMismatchError, match="not trained in a pinned image"):
        executor.check(_with_image(None))


def test_auto_choice_follows_the_fingerprint():
    here = capture()
    other_torch = here.model_copy(update={"torch": here.torch.model_copy(update={"version": "1.7.1"})})
    pinned = other_torch.model_copy(update={"image_digest": "r/x@sha256:" + "2" * 64})
    assert auto_choice(here.model_copy(update={"image_digest": pinned.image_digest}), here) == "local"
    assert auto_choice(pinned, here) == "docker"
    assert auto_choice(other_torch, here) == "local"
    assert auto_choice(None, here) == "local"



def _untrusted(replay_image: str) -> list[str]:
    repository, digest = replay_image.split("@")
    hexes = digest.removeprefix("sha256:")
    return [
        f"127.0.0.1:1/mmstore-replay@{digest}",  # another registry
        f"evil.example/x@{digest}",
        f"{repository}-evil@{digest}",  # a name the trusted one is a prefix of
        f"{repository}:latest@{digest}",
        f"{replay_image}0",  # a digest with a suffix
        f"{replay_image}\n",
        f"{repository}@sha256:{hexes.upper()}",
        f"{repository}@sha512:{hexes}{hexes}",
        f"x {replay_image}",
    ]


def test_images_outside_the_allow_list_are_refused_before_any_container(
    tmp_path, docker_client, dockerd, replay_image, replay_settings,
):
    store = Store.open(str(tmp_path / "store"), replay_settings)
    models = initial_set(4, seed=9)
    store.save(models, approach="provenance", lineage="fleet")
    here = capture()
    # Another torch build: "auto" would replay in the recorded image.
    elsewhere = here.model_copy(update={"torch": here.torch.model_copy(update={"version": "1.7.1"})})
    refused = _untrusted(replay_image)
    for cycle, image in enumerate(refused, start=1):
        models, record = retrain(models, {cycle % 4: "full"}, str(tmp_path / "store-datasets"), cycle, seed=9)
        environment = elsewhere.model_copy(update={"image_digest": image}).to_json().decode()
        set_id = store.save(models, approach="provenance", lineage="fleet", provenance=record.model_copy(update={"environment": environment}))
        for name in ("docker", "auto"):
            with pytest.raises(UntrustedImageError, match="MMSTORE_REPLAY_IMAGES|does not pin an image") as caught:
                choose(name, store, set_id, docker_host=dockerd.address)
            assert "\n" not in str(caught.value)
        with pytest.raises(MMStoreError):
            DockerExecutor(image, docker_host=dockerd.address, settings=replay_settings)
    assert docker_client.containers.list(all=True) == []


def test_replay_in_recorded_images_is_off_until_repositories_are_trusted(replay_image):
    with pytest.raises(UntrustedImageError, match="set MMSTORE_REPLAY_IMAGES"):
        DockerExecutor(replay_image, docker_host=NOWHERE, settings=Settings())
    repository = replay_image.split("@")[0]
    executor = DockerExecutor(replay_image, docker_host=NOWHERE, settings=Settings(replay_images=(repository,)))
    assert executor.image == replay_image
