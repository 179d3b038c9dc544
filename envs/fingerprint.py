"""Environment fingerprints: what a process computed with, captured cheaply and compared by severity."""

from __future__ import annotations

import functools
import os
import platform
import re
import socket
import sys
from importlib import metadata
from pathlib import Path
from collections.abc import Iterator
from typing import Literal

import numpy
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from mmstore.digest import digest_bytes
from mmstore.errors import MMStoreError
from mmstore.manifest import canonical_json

__all__ = [
    "SCHEMA_VERSION", "NUMERIC_ENV_VARS", "FingerprintError", "PythonInfo", "OSInfo", "CPUInfo", "TorchInfo",
    "NumpyInfo", "Fingerprint", "capture",
]

SCHEMA_VERSION = 1

NUMERIC_ENV_VARS = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
    "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED",
)

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class FingerprintError(MMStoreError):
    """A stored fingerprint cannot be read."""


class PythonInfo(BaseModel):
    """The interpreter."""

    model_config = _FROZEN
    version: str
    implementation: str


class OSInfo(BaseModel):
    """The operating system and kernel."""

    model_config = _FROZEN
    system: str
    release: str
    platform: str


class CPUInfo(BaseModel):
    """The processor: its model name and instruction-set flags."""

    model_config = _FROZEN
    model: str | None
    flags: tuple[str, ...]


class TorchInfo(BaseModel):
    """The torch build and the kernels it selects on this machine."""

    model_config = _FROZEN
    version: str
    git_version: str | None
    config_digest: str
    build_settings: dict[str, str]
    blas: str | None
    lapack: str | None
    mkl: bool
    mkl_version: str | None
    mkldnn_version: str | None
    cpu_capability: str
    cuda: str | None
    cudnn: int | None
    gpus: tuple[str, ...]
    num_threads: int
    num_interop_threads: int
    deterministic_algorithms: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool


class NumpyInfo(BaseModel):
    """numpy and the BLAS it links."""

    model_config = _FROZEN
    version: str
    blas: str | None
    blas_version: str | None
    simd_found: tuple[str, ...]


class Fingerprint(BaseModel):
    """Everything about a process that can change the bits a computation produces."""

    model_config = _FROZEN
    schema_version: Literal[1] = SCHEMA_VERSION
    python: PythonInfo
    os: OSInfo
    machine: str
    cpu: CPUInfo
    torch: TorchInfo
    numpy: NumpyInfo
    env: dict[str, str | None]
    packages: tuple[str, ...]
    packages_digest: str
    hostname: str
    container: bool
    image_digest: str | None

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, no whitespace): equal fingerprints give equal bytes."""
        return canonical_json(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> "Fingerprint":
        """Parse a fingerprint written by `to_json`."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise FingerprintError(
                f"not a fingerprint of schema version {SCHEMA_VERSION}: {exc.error_count()} problem(s), "
                f"first: {exc.errors()[0]['msg']}; capture it again with envs.capture()"
            ) from exc


def _cpu() -> CPUInfo:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return CPUInfo(model=platform.processor() or None, flags=())
    fields = dict(_cpuinfo_fields(text))
    flags = fields.get("flags") or fields.get("Features") or ""
    model = fields.get("model name") or fields.get("Model") or fields.get("CPU part")
    return CPUInfo(model=model, flags=tuple(sorted(set(flags.split()))))


def _cpuinfo_fields(text: str) -> Iterator[tuple[str, str]]:
    # Only the first processor block: all cores of one machine report the same model and flags.
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            yield key.strip(), value.strip()


def _build_settings(config: str) -> dict[str, str]:
    line = next((ln for ln in config.splitlines() if "Build settings:" in ln), "")
    body = line.split("Build settings:", 1)[1] if line else ""
    # Values hold spaces and commas of their own; a key is an upper-case word right before '='.
    pairs = re.findall(r"([A-Z_][A-Z0-9_]*)=(.*?)(?:, (?=[A-Z_][A-Z0-9_]*=)|,?\s*$)", body)
    return {key: value.strip() for key, value in pairs}


def _search(pattern: str, text: str) -> str | None:
    found = re.search(pattern, text)
    return found.group(1) if found else None


def _torch() -> TorchInfo:
    config = torch.__config__.show()
    settings = _build_settings(config)
    cuda = torch.cuda.is_available()
    return TorchInfo(
        version=torch.__version__, git_version=torch.version.git_version, config_digest=digest_bytes(config.encode()),
        build_settings=settings, blas=settings.get("BLAS_INFO"), lapack=settings.get("LAPACK_INFO"),
        mkl=torch.backends.mkl.is_available(), mkl_version=_search(r"Math Kernel Library Version ([\d.]+)", config),
        mkldnn_version=_search(r"MKL-DNN v(\S+)", config), cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if cuda else None,
        gpus=tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else (),
        num_threads=torch.get_num_threads(), num_interop_threads=torch.get_num_interop_threads(),
        deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
        cudnn_deterministic=torch.backends.cudnn.deterministic, cudnn_benchmark=torch.backends.cudnn.benchmark,
    )


def _numpy() -> NumpyInfo:
    config = numpy.show_config(mode="dicts") or {}
    blas = config.get("Build Dependencies", {}).get("blas", {})
    simd = tuple(config.get("SIMD Extensions", {}).get("found", []))
    return NumpyInfo(
        version=numpy.__version__, blas=blas.get("name"), blas_version=blas.get("version"), simd_found=simd,
    )


def _dist_info_entry(folder: Path, name: str) -> tuple[str, str] | None:
    stem, _, suffix = name.rpartition(".")
    if suffix not in ("dist-info", "egg-info"):
        return None
    if suffix == "dist-info":
        # Wheel installs name the folder `{name}-{version}.dist-info`: no need to parse METADATA.
        dist, _, version = stem.rpartition("-")
        return dist, version
    dist = metadata.PathDistribution(folder / name)
    return dist.metadata["Name"] or stem.partition("-")[0], dist.version or "unknown"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _listing(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        # Zip archives, missing and unreadable entries of sys.path hold no installed distributions.
        return []


def _packages() -> tuple[str, ...]:
    found: dict[str, str] = {}
    for entry in sys.path:
        folder = Path(entry or ".")
        for name in _listing(folder):
            pair = _dist_info_entry(folder, name)
            # The first match on sys.path is the one imported, as in importlib.metadata.
            if pair and _normalise(pair[0]) not in found:
                found[_normalise(pair[0])] = pair[1]
    return tuple(sorted(f"{name}=={version}" for name, version in found.items()))


def _in_container() -> bool:
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return True
    try:
        cgroup = Path("/proc/1/cgroup").read_text()
    except OSError:
        return False
    return any(hint in cgroup for hint in ("docker", "containerd", "kubepods", "libpod", "lxc"))


@functools.cache
def _captured() -> Fingerprint:
    packages = _packages()
    return Fingerprint(
        python=PythonInfo(version=platform.python_version(), implementation=platform.python_implementation()),
        os=OSInfo(system=platform.system(), release=platform.release(), platform=platform.platform()),
        machine=platform.machine(), cpu=_cpu(), torch=_torch(), numpy=_numpy(),
        env={name: os.environ.get(name) for name in NUMERIC_ENV_VARS},
        packages=packages, packages_digest=digest_bytes("\n".join(packages).encode()),
        hostname=socket.gethostname(), container=_in_container(),
        image_digest=os.environ.get("MMSTORE_IMAGE_DIGEST") or None,
    )


def capture(refresh: bool = False) -> Fingerprint:
    """This process's fingerprint, captured once per process unless `refresh` asks for a new one."""
    if refresh:
        _captured.cache_clear()
    return _captured()
