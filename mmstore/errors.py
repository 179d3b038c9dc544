"""One hierarchy for every failure mmstore reports; each message says what to do next."""

__all__ = [
    "MMStoreError",
    "IntegrityError",
    "NotFoundError",
    "ArchitectureError",
    "UntrustedModuleError",
    "ConflictError",
    "InUseError",
    "ReproductionError",
    "TrainerChangedError",
    "DatasetError",
    "EnvironmentMismatchError",
    "FormatError",
    "NewerFormatError",
    "ResourceLimitError",
    "UnknownPluginError",
    "UnknownApproachError",
    "UnknownCodecError",
    "UnknownExecutorError",
]


class MMStoreError(Exception):
    """Base class of every error mmstore raises on purpose."""


class IntegrityError(MMStoreError, ValueError):
    """Stored bytes do not match their digest: corruption, truncation or tampering."""


class NotFoundError(MMStoreError, KeyError):
    """A set, lineage, blob or dataset that was asked for does not exist."""

    def __str__(self) -> str:
        # KeyError quotes its argument; a sentence reads better unquoted.
        return str(self.args[0]) if self.args else ""


class ArchitectureError(MMStoreError, TypeError):
    """Models or a stored set do not fit the architecture they are declared with."""


class UntrustedModuleError(ArchitectureError):
    """A stored architecture names a module outside the allow-list; it was not imported."""


class ConflictError(MMStoreError):
    """A concurrent writer moved a lineage or created the same object first."""


class InUseError(MMStoreError):
    """A set cannot be deleted because other sets are derived from it."""


class ReproductionError(MMStoreError):
    """A replayed training produced parameters that differ from the recorded ones."""


class TrainerChangedError(ReproductionError):
    """The training function's source differs from the one recorded when the set was saved."""


class DatasetError(MMStoreError, ValueError):
    """A dataset a provenance set was trained on is missing or no longer has its recorded digest."""


class EnvironmentMismatchError(MMStoreError):
    """The environment a replay would run in differs from the recorded one in ways that change bits."""


class FormatError(IntegrityError):
    """A stored document does not parse, or breaks an invariant of its format: the store was forged or damaged."""


class NewerFormatError(MMStoreError):
    """A stored document was written by a newer mmstore in a format this one cannot read."""


class ResourceLimitError(MMStoreError, MemoryError):
    """Stored data asks for more memory or bytes than the configured limits allow."""


class UnknownPluginError(MMStoreError, KeyError):
    """A name that no registered approach, codec or executor has."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownApproachError(UnknownPluginError):
    """An approach name that is not registered."""


class UnknownCodecError(UnknownPluginError):
    """A codec name that is not registered."""


class UnknownExecutorError(UnknownPluginError):
    """A replay executor name that is not registered."""


__all__ += ["StoreURLError", "StorageError", "StoreUnreachableError", "AccessDeniedError", "OutputError"]


class StoreURLError(MMStoreError, ValueError):
    """A store URL that names nothing mmstore can open: an unknown scheme, a web address, a file."""


class StorageError(MMStoreError, OSError):
    """Reading or writing the store's storage failed: a full or read-only disk, an I/O error."""


class StoreUnreachableError(StorageError, ConnectionError):
    """The object store endpoint holding the store cannot be reached."""


class AccessDeniedError(StorageError, PermissionError):
    """The store's storage refused access: missing or wrong credentials, file permissions."""


class OutputError(MMStoreError, OSError):
    """A file mmstore was asked to write outside the store cannot be written."""
