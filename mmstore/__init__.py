"""mmstore: save and recover thousands of related models losslessly, cheaply and verifiably."""

from .arch import ArchSpec, register_factory, register_group_trainer, register_trainer
from .catalog import Catalog
from .commit import LineageBatch, NewVersion
from .errors import (
    ArchitectureError,
    IntegrityError,
    MMStoreError,
    NotFoundError,
    ReproductionError,
)
from .modelset import ModelSet
from .provenance_records import DatasetRef, ProvenanceRecord
from .settings import Settings
from .store import RecoveryContext, SetInfo, Store

__all__ = [
    "Store",
    "ModelSet",
    "Catalog",
    "ArchSpec",
    "Settings",
    "SetInfo",
    "RecoveryContext",
    "LineageBatch",
    "NewVersion",
    "MMStoreError",
    "IntegrityError",
    "NotFoundError",
    "ArchitectureError",
    "ReproductionError",
    "ProvenanceRecord",
    "DatasetRef",
    "register_factory",
    "register_trainer",
    "register_group_trainer",
]
