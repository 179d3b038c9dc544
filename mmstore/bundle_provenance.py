"""Provenance bundles: a device sends how it retrained (trainer, recipes, datasets) instead of parameters.

The bundle holds a `DeviceRecord` (the trainer, the named recipes, per retrained model its recipe and
its dataset's digest and size, the environment fingerprint) and the bytes of every dataset the
server does not hold yet. Ingest stores those datasets below the store's dataset root under their
digests, re-trains the models from the versions it holds and commits the result only if it is
bit for bit what the device claims (the header's content digest); the version is then a
provenance set, recovered by the same replay.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from .arch import TRAINER_KIND, import_trusted
from .backend import open_backend
from .blobs import Hex64
from .bundle import Bundle, BundleHeader, frame
from .digest import digest_bytes
from .errors import FormatError, IntegrityError, MMStoreError, ReproductionError
from .manifest import ArchDocument, parse_document, parse_json
from .provenance_records import DatasetRef, DatasetRoots, ProvenanceRecord, check_dataset, read_datasets
from .replay import ReplayJob, ReplayTask, run_jobs

__all__ = ["DatasetClaim", "DeviceRecord", "encode_provenance_bundle", "replay_bundle"]

_NAME = Annotated[str, Field(min_length=1, max_length=64)]


class DatasetClaim(BaseModel):
    """A dataset a model trained on: its digest and size, and where the server already holds it (else it is sent)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    digest: Hex64
    size: int = Field(ge=0, le=1 << 40)
    uri: str | None = Field(None, min_length=1, max_length=4096)


class DeviceRecord(BaseModel):
    """How a device retrained its models: what a provenance bundle claims."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    trainer: str = Field(min_length=3, max_length=256)
    recipes: dict[_NAME, dict[str, JsonValue]] = Field(max_length=256)
    changes: dict[Annotated[int, Field(ge=0, lt=1 << 24)], tuple[_NAME, DatasetClaim]] = Field(min_length=1)
    environment: str = Field(max_length=1 << 16)

    def sent(self) -> list[DatasetClaim]:
        """The datasets the bundle carries, in the order it carries them: each one once, by digest."""
        return sorted({claim.digest: claim for _, claim in self.changes.values() if claim.uri is None}.values(),
                      key=lambda claim: claim.digest)


def encode_provenance_bundle(header: BundleHeader, record: DeviceRecord, datasets: dict[str, bytes]) -> bytes:
    """The bundle's bytes: the header (with the record's and datasets' sizes), the record, the datasets it sends."""
    text = json.dumps(record.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
    sent = [datasets[claim.digest] for claim in record.sent()]
    header = header.model_copy(update={"kind": "provenance", "codec": "raw", "segments": (), "record_bytes": len(text),
                                       "datasets": tuple(len(d) for d in sent)})
    return frame(header, text, *sent)


def replay_bundle(bundle: Bundle, base: np.ndarray, doc: ArchDocument, store, device: str) -> tuple[np.ndarray, ProvenanceRecord]:
    """The rows a provenance bundle claims, re-trained here from `base`, and the record the store keeps for them.

    Datasets the bundle carries are checked against their digests and stored below the first dataset
    root under `devices/<device>/<digest>`; datasets it names must lie within the dataset roots.
    """
    header, layout = bundle.header, doc.layout
    if base.shape != (header.n_models, layout.row_nbytes) or digest_bytes(base) != header.base_content:
        raise IntegrityError(f"bundle {bundle.digest[:12]} was not made against these base models")
    what = f"the training record of bundle {bundle.digest[:12]}"
    record = parse_document(DeviceRecord, parse_json(bytes(bundle.segments[0]), what), what)
    sent = record.sent()
    if len(sent) != len(bundle.segments) - 1 or any(c.size != len(v) for c, v in zip(sent, bundle.segments[1:])):
        raise FormatError(f"{what} names other datasets than the bundle carries")
    if max(record.changes) >= header.n_models or set(r for r, _ in record.changes.values()) - set(record.recipes):
        raise FormatError(f"{what} names models past the device's {header.n_models} or recipes it does not define")
    roots = DatasetRoots.of(store.url, store.settings)
    refs, carried = _dataset_refs(record, bundle, roots, device)
    import_trusted(record.trainer, store.settings.allowed_prefixes(), TRAINER_KIND)
    models = sorted(record.changes)
    named = [refs[record.changes[m][1].digest] for m in models if record.changes[m][1].digest not in carried]
    held = dict(zip([ref.digest for ref in named], read_datasets(named, roots)))
    data = [{**held, **carried}[record.changes[m][1].digest] for m in models]
    jobs = [ReplayJob(m, base[m], d, record.recipes[record.changes[m][0]]) for m, d in zip(models, data)]
    rows = base.copy()
    try:
        rows[models] = run_jobs(ReplayTask(doc.arch, layout, record.trainer, store.settings.allowed_prefixes()), jobs)
    except MMStoreError:
        raise
    except Exception as exc:  # a trusted trainer given data or recipes it cannot train on: the bundle's fault
        raise ReproductionError(f"the trainer {record.trainer} failed on the data or recipes of bundle {bundle.digest[:12]} "
                                f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
    if digest_bytes(rows) != header.content:
        raise ReproductionError(f"re-training the models of bundle {bundle.digest[:12]} here gives other models than "
                                "the device claims: its training is not reproducible in this environment")
    # Only a bundle that reproduced leaves its data behind, below the root under names it cannot choose.
    target = open_backend(roots.roots[0].rstrip("/"))
    for digest, view in carried.items():
        target.put(f"devices/{device}/{digest}", view, exclusive=True)
    changes = {m: (record.changes[m][0], refs[record.changes[m][1].digest]) for m in models}
    return rows, ProvenanceRecord(trainer=record.trainer, recipes=record.recipes, changes=changes,
                                  environment=record.environment)


def _dataset_refs(record: DeviceRecord, bundle: Bundle, roots: DatasetRoots, device: str) -> tuple[dict[str, DatasetRef], dict[str, bytes]]:
    """Where every dataset lies (or will, once the bundle reproduced), and the bytes of those the bundle carries."""
    refs, carried = {}, {}
    root = roots.roots[0].rstrip("/")
    for claim, view in zip(record.sent(), bundle.segments[1:]):
        if digest_bytes(view) != claim.digest:
            raise IntegrityError(f"a dataset bundle {bundle.digest[:12]} carries does not match its digest")
        refs[claim.digest] = check_dataset(DatasetRef(uri=f"{root}/devices/{device}/{claim.digest}", digest=claim.digest,
                                                      size=claim.size), roots).ref
        carried[claim.digest] = bytes(view)
    for _, claim in record.changes.values():
        if claim.uri is not None:
            refs[claim.digest] = check_dataset(DatasetRef(uri=claim.uri, digest=claim.digest, size=claim.size), roots).ref
    return refs, carried
