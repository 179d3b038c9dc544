"""Build the replay image from local material, for machines that cannot pull images.

The image is equivalent to `envs/replay_image/Dockerfile`: a Debian bookworm minbase root file
system (debootstrap), this machine's Python interpreter and the project's locked packages (copied,
so the image computes with exactly the bits of this environment), and the project's sources. Pushed
to a registry, it gets the `repo@sha256:` digest replays pin. Both tarballs are cached under the
build directory, the second keyed by the locked dependency set and the interpreter.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

import docker

from envs.docker_executor import DockerError, connect
from mmstore.digest import digest_bytes

__all__ = ["PROJECT_PACKAGES", "REPLAY_DISTRIBUTIONS", "REPOSITORY", "debian_tar", "rootfs_tar", "image_repository",
           "build_image", "main"]

PROJECT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("mmstore", "envs", "workloads")
# What replay imports, with their own requirements added by `_closure`; orchestration stays out.
REPLAY_DISTRIBUTIONS = ("torch", "numpy", "pydantic", "pydantic-settings", "blake3", "zstandard", "xxhash",
                        "safetensors", "fsspec", "rich")
SUITE = "bookworm"
# Part of the cached root file system's key: raised whenever what goes into it changes.
_ROOTFS_VERSION = 2
REPOSITORY = "mmstore-replay"
# Shared libraries the interpreter's extension modules and torch link that minbase lacks.
DEBIAN_PACKAGES = ("libffi8", "libssl3", "libsqlite3-0", "libreadline8", "libncursesw6", "libexpat1", "libbz2-1.0",
                   "liblzma5", "zlib1g", "libstdc++6", "libgomp1", "libuuid1")
# Left out of the image: test suites, C headers and tools nothing imports, Debian's docs and package cache.
_SKIP = re.compile(r"(^|/)(test|tests|idlelib|tkinter|ensurepip|site-packages)$|(^|/)torch/include$")
_SKIP_DEBIAN = re.compile(r"^\./(usr/share/(doc|man|locale|info)/.|var/cache/apt/archives/.*\.deb$|var/lib/apt/lists/.)")


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise DockerError(f"{what} failed ({done.returncode}): {done.stderr[-2000:]}")


def debian_tar(build: Path, mirror: str | None = None) -> Path:
    """The cached Debian minbase root file system as a tarball, made with debootstrap on first use.

    Packages come from `mirror`, or from debootstrap's default mirror when None.
    """
    out = build / f"replay-debian-{SUITE}-{digest_bytes(' '.join(DEBIAN_PACKAGES).encode())[:8]}.tar"
    if not out.exists():
        with tempfile.TemporaryDirectory(dir=build) as tmp:
            root = Path(tmp) / "root"
            include = f"--include={','.join(DEBIAN_PACKAGES)}"
            debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
            _run([debootstrap, "--variant=minbase", include, SUITE, str(root), *([mirror] if mirror else [])],
                 "debootstrap")
            _run(["tar", "-C", str(root), "-cf", f"{out}.part", "."], "packing the root file system")
        Path(f"{out}.part").rename(out)
    return out


def _closure(names: tuple[str, ...]) -> list[metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found:
            continue
        try:
            found[name] = dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement for another platform
        todo += [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in dist.requires or [] if "extra ==" not in r]
    return sorted(found.values(), key=lambda d: d.metadata["Name"].lower())


def _top_level(dist: metadata.Distribution) -> set[str]:
    # Whole top-level folders, so that compiled bytecode comes along and imports stay fast.
    return {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}


def rootfs_tar(build: Path, distributions: tuple[str, ...] = REPLAY_DISTRIBUTIONS, mirror: str | None = None) -> Path:
    """The cached root file system with this interpreter and the replay's packages added at their host paths."""
    dists = _closure(distributions)
    pins = "\n".join(f"{d.metadata['Name']}=={d.version}" for d in dists)
    recipe = f"{_ROOTFS_VERSION}\n{sys.version}\n{sys.base_prefix}\n{pins}\n{_SKIP.pattern}\n{_SKIP_DEBIAN.pattern}"
    key = digest_bytes(recipe.encode())[:16]
    out = build / f"replay-rootfs-{key}.tar"
    if out.exists():
        return out
    part = Path(f"{out}.part")
    site = Path(sysconfig.get_paths()["purelib"])
    prefix = Path(sys.base_prefix)
    image_site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    with tarfile.open(part, "w") as tar:
        folders = [str(folder).lstrip("/") for folder in reversed(prefix.parents[:-1])]
        present = _copy_debian(debian_tar(build, mirror), tar, set(folders))
        for folder in folders:
            if folder not in present:
                tar.addfile(_folder(folder))
        tar.add(prefix, arcname=str(prefix).lstrip("/"), filter=_skip)
        for name in sorted(set().union(*map(_top_level, dists))):
            tar.add(site / name, arcname=str(image_site / name).lstrip("/"), filter=_skip)
    part.rename(out)
    return out


def _copy_debian(source: Path, tar: tarfile.TarFile, passable: set[str]) -> set[str]:
    """Copy the Debian root file system; the `passable` folders it has (such as /root, 0700) are opened to all."""
    present = set()
    with tarfile.open(source) as debian:
        for info in debian:
            if _SKIP_DEBIAN.match(info.name):
                continue
            name = info.name.removeprefix("./").rstrip("/")
            if name in passable and info.isdir():
                # The interpreter lives below: the container's unprivileged user must pass through.
                info.mode |= 0o055
                present.add(name)
            tar.addfile(info, debian.extractfile(info) if info.isreg() else None)
    return present


def _folder(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


def _skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if _SKIP.search(info.name):
        return None
    # Replays run as an unprivileged user: everything added is readable, folders and programs runnable.
    info.mode |= 0o044 | (0o011 if info.isdir() or info.mode & 0o100 else 0)
    return info


_DOCKERFILE = """FROM {base}
COPY src /opt/mmstore
ENV PATH={prefix}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PYTHONPATH=/opt/mmstore LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /replay
USER 65534:65534
CMD ["python", "-m", "envs.replay_worker", "/replay"]
"""


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _context(base: str) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _add_file(tar, "Dockerfile", _DOCKERFILE.format(base=base, prefix=sys.base_prefix).encode())
        for name in PROJECT_PACKAGES:
            tar.add(PROJECT / name, arcname=f"src/{name}", filter=lambda i: None if "__pycache__" in i.name else i)
        # The project's metadata beside its sources: its entry points register the executors and trusted packages.
        project = metadata.distribution("mmstore")
        info_dir = f"src/mmstore-{project.version}.dist-info"
        for name in ("METADATA", "entry_points.txt"):
            _add_file(tar, f"{info_dir}/{name}", (project.read_text(name) or "").encode())
    buffer.seek(0)
    return buffer


def _base(client: docker.DockerClient, rootfs: Path) -> str:
    tag = f"mmstore-replay-base:{rootfs.stem.rsplit('-', 1)[1]}"
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        client.api.import_image(src=str(rootfs), repository=tag.split(":")[0], tag=tag.split(":")[1])
    return tag


def image_repository(registry: str) -> str:
    """The registry/repository name the replay image is pushed to: what `MMSTORE_REPLAY_IMAGES` must list."""
    return f"{registry}/{REPOSITORY}"


def build_image(client: docker.DockerClient, registry: str, build: Path = PROJECT / "build", mirror: str | None = None) -> str:
    """Build the replay image, push it to `registry` (host:port), return its pinned `repo@sha256:…` reference."""
    build.mkdir(parents=True, exist_ok=True)
    base = _base(client, rootfs_tar(build, mirror=mirror))
    repository = image_repository(registry)
    image, _ = client.images.build(fileobj=_context(base), custom_context=True, tag=f"{repository}:latest",
                                   network_mode="none", rm=True)
    for line in client.images.push(repository, "latest", stream=True, decode=True):
        if "error" in line:
            raise DockerError(f"pushing {repository} to {registry} failed: {line['error']}; is the registry running?")
    image.reload()
    pinned = [ref for ref in image.attrs.get("RepoDigests", []) if ref.startswith(repository + "@")]
    if not pinned:
        raise DockerError(f"the registry at {registry} returned no digest for {repository}; push it again")
    return pinned[0]


def main(argv: list[str] | None = None) -> int:
    """Build and push the replay image; with --engine-dir, on a private dockerd and registry started for it."""
    parser = argparse.ArgumentParser(prog="python -m envs.image", description=main.__doc__)
    parser.add_argument("--docker-host", help="engine address (default: start a private one under --engine-dir)")
    parser.add_argument("--registry", help="registry host:port (default: start one under --engine-dir)")
    parser.add_argument("--engine-dir", default=str(PROJECT / "build" / "engine"), help="where private daemons keep state")
    parser.add_argument("--mirror", default=os.environ.get("MMSTORE_DEBIAN_MIRROR") or None,
                        help="Debian mirror URL for debootstrap (default: $MMSTORE_DEBIAN_MIRROR, else debootstrap's own)")
    args = parser.parse_args(argv)
    from envs.engine import start_dockerd, start_registry

    started = []
    try:
        if not args.docker_host:
            started.append(start_dockerd(Path(args.engine_dir)))
        if not args.registry:
            started.append(start_registry(Path(args.engine_dir) / "registry", port=5000))
        client = connect(args.docker_host or started[0].address)
        reference = build_image(client, args.registry or started[-1].address, mirror=args.mirror)
        print(reference)
        # On stderr, so that scripts can still read the reference alone from stdout.
        print(f"replays may use it once MMSTORE_REPLAY_IMAGES lists {reference.split('@')[0]}", file=sys.stderr)
    finally:
        for daemon in reversed(started):
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
