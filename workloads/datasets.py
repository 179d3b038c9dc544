"""Each cell's newest cycle as one `.npz` file on any fsspec location, addressed and verified by digest."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict

from mmstore.digest import digest_bytes

__all__ = [
    "DatasetRef",
    "DatasetError",
    "DatasetMissingError",
    "DatasetDigestError",
    "dataset_uri",
    "encode_arrays",
    "decode_arrays",
    "write_dataset",
    "write_datasets",
    "read_dataset",
]

# A fixed timestamp: np.savez stamps the current time into the zip, which would change the bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class DatasetRef(BaseModel):
    """Where a dataset file lives and the digest and size its bytes must have."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    digest: str
    size: int


class DatasetError(ValueError):
    """A dataset file cannot be used."""


class DatasetMissingError(DatasetError):
    """A dataset file does not exist."""


class DatasetDigestError(DatasetError):
    """A dataset file's bytes do not match the digest recorded for it."""


def dataset_uri(root: str, cycle: int, cell: int) -> str:
    """The location of one cell's data for one cycle under `root`."""
    return f"{root.rstrip('/')}/cycle-{cycle:04d}/cell-{cell:05d}.npz"


def encode_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Arrays as `.npz` bytes that depend only on the arrays (sorted names, fixed timestamps)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
    return buffer.getvalue()


def decode_arrays(data: bytes) -> dict[str, np.ndarray]:
    """Arrays from `.npz` bytes, refusing pickled objects."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _ref(uri: str, data: bytes) -> DatasetRef:
    return DatasetRef(uri=uri, digest=digest_bytes(data), size=len(data))


def _prepare(fs: fsspec.AbstractFileSystem, paths: list[str]) -> None:
    # Only a local file system needs parent folders; object stores have none.
    if isinstance(fs, LocalFileSystem):
        for parent in {fs._parent(p) for p in paths}:
            fs.makedirs(parent, exist_ok=True)


def write_dataset(root: str, cycle: int, cell: int, arrays: Mapping[str, np.ndarray]) -> DatasetRef:
    """Write one cell's cycle data under `root` and return its reference."""
    return write_datasets(root, cycle, {cell: arrays})[cell]


def write_datasets(
    root: str, cycle: int, per_cell: Mapping[int, Mapping[str, np.ndarray]]
) -> dict[int, DatasetRef]:
    """Write many cells' data in one `pipe` call (one batch of requests on object stores)."""
    encoded = {cell: (dataset_uri(root, cycle, cell), encode_arrays(a)) for cell, a in per_cell.items()}
    fs, _ = fsspec.core.url_to_fs(root)
    paths = {cell: fsspec.core.url_to_fs(uri)[1] for cell, (uri, _) in encoded.items()}
    _prepare(fs, list(paths.values()))
    fs.pipe({paths[cell]: data for cell, (_, data) in encoded.items()})
    return {cell: _ref(uri, data) for cell, (uri, data) in encoded.items()}


def read_dataset(ref: DatasetRef) -> dict[str, np.ndarray]:
    """The arrays of `ref`, after checking that the file's bytes have the recorded digest."""
    fs, path = fsspec.core.url_to_fs(ref.uri)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError as exc:
        message = f"dataset file {ref.uri} does not exist; re-create it or restore it"
        raise DatasetMissingError(message) from exc
    actual = digest_bytes(data)
    if actual != ref.digest:
        raise DatasetDigestError(
            f"dataset file {ref.uri} has digest {actual}, expected {ref.digest}: it was changed or corrupted"
        )
    return decode_arrays(data)
