"""One settings object, read from `MMSTORE_*` environment variables and passed explicitly."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing import Annotated

from .plugins import EXECUTORS, installed_trusted_modules

__all__ = ["Settings", "DEFAULT_TRUSTED_MODULES"]

# The library vouches only for PyTorch's own layers; applications name their packages (see `allowed_prefixes`).
DEFAULT_TRUSTED_MODULES = ("torch.nn",)


class Settings(BaseSettings):
    """Configuration of a store; `Settings()` reads `MMSTORE_*` variables once, at construction."""

    model_config = SettingsConfigDict(env_prefix="MMSTORE_", frozen=True)

    store: str = Field("./mmstore-data/update", description="Default store URL for the CLI and flows.")
    trusted_modules: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Extra module prefixes whose factories may be imported (comma separated)."
    )
    durable: bool = Field(True, description="fsync data and manifests before a save returns.")
    max_chain_depth: int = Field(10, ge=1, description="Update approach: snapshot when a chain grows past this.")
    max_replay_depth: int = Field(
        30, ge=1, description="Provenance approach: snapshot when a recovery would replay more versions than this."
    )
    max_delta_fraction: float = Field(
        0.5, gt=0, le=1, description="Update approach: snapshot when a delta exceeds this share of a snapshot."
    )
    update_codec: str = Field(
        "auto", description="Update approach: a registered codec for changed bytes (auto: XOR when the base is at hand)."
    )
    replay_executor: str = Field(
        "auto", description="Provenance approach: the registered executor that replays training when none is given."
    )
    trust_installed: bool = Field(
        True, description="Also trust the packages installed distributions vouch for (entry points `mmstore.trusted_modules`)."
    )
    max_set_bytes: int = Field(
        4 << 30, ge=0, description="Largest set (or stored object) a reader allocates memory for, in bytes."
    )
    cache_sets: int = Field(4, ge=0, description="How many recently materialised sets a store keeps in memory.")
    dataset_roots: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Provenance approach: the locations (paths, file://, memory://, s3:// prefixes, comma separated) "
        "datasets may be read from; empty: only the store URL + '-datasets'.",
    )
    max_dataset_bytes: int = Field(1 << 30, ge=0, description="Provenance approach: the largest dataset a record may name.")
    storage_price_gb_month: float = Field(0.023, ge=0, description="Cost model: price of storing one GB for a month.")
    upload_price_gb: float = Field(0.09, ge=0, description="Cost model: price of receiving one GB from a device.")
    retention_months: float = Field(12.0, ge=0, description="Cost model: months a version is kept.")
    max_recover_seconds: float = Field(30.0, gt=0, description="Cost model: recover any version within this many seconds.")
    read_bytes_per_second: float = Field(2e8, gt=0, description="Cost model: measured read and check throughput.")
    delta_step_seconds: float = Field(0.01, ge=0, description="Cost model: fixed seconds of applying one delta.")
    replay_seconds_per_model: float = Field(0.18, ge=0, description="Cost model: seconds one model's replay takes.")
    replay_images: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Docker replay: the registry/repository names (comma separated) whose images may replay a set; "
        "empty: none.",
    )

    @field_validator("trusted_modules", "dataset_roots", "replay_images", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("update_codec")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        from .codecs import CODECS

        if value != "auto" and value not in CODECS:
            raise ValueError(f"unknown codec {value!r}; choose auto or one of {', '.join(CODECS.names())}")
        return value

    @field_validator("replay_executor")
    @classmethod
    def _known_executor(cls, value: str) -> str:
        if value not in EXECUTORS:
            raise ValueError(f"unknown replay executor {value!r}; choose one of {', '.join(EXECUTORS.names())}")
        return value

    def allowed_prefixes(self) -> tuple[str, ...]:
        """Module prefixes from which architecture factories and trainers may be imported."""
        installed = installed_trusted_modules() if self.trust_installed else ()
        return DEFAULT_TRUSTED_MODULES + installed + tuple(self.trusted_modules)
