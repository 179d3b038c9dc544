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
