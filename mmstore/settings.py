"""One settings object, read from `MMSTORE_*` environment variables and passed explicitly."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing import Annotated, Literal

__all__ = ["Settings", "DEFAULT_TRUSTED_MODULES"]

DEFAULT_TRUSTED_MODULES = ("workloads", "envs", "torch.nn")


class Settings(BaseSettings):
    """Configuration of a store; `Settings()` reads `MMSTORE_*` variables once, at construction."""

    model_config = SettingsConfigDict(env_prefix="MMSTORE_", frozen=True)

    store: str = Field("./mmstore-data", description="Default store URL for the CLI and flows.")
    trusted_modules: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Extra module prefixes whose factories may be imported (comma separated)."
    )
    durable: bool = Field(True, description="fsync data and manifests before a save returns.")
    max_chain_depth: int = Field(10, ge=1, description="Update approach: snapshot when a chain grows past this.")
    max_delta_fraction: float = Field(
        0.5, gt=0, le=1, description="Update approach: snapshot when a delta exceeds this share of a snapshot."
    )
    update_codec: Literal["auto", "raw", "group-zstd", "xor-group-zstd"] = Field(
        "auto", description="Update approach: how changed bytes are encoded (auto: XOR when the base is at hand)."
    )
    replay_executor: str = Field(
        "envs.executors:LocalExecutor",
        description="Provenance approach: the executor class that replays training when none is passed (a trusted import path).",
    )
    executor_chooser: str = Field(
        "envs.choice:choose",
        description="Provenance approach: picks the executor for the CLI's --executor choice (a trusted import path).",
    )
    cache_sets: int = Field(4, ge=0, description="How many recently materialised sets a store keeps in memory.")

    @field_validator("trusted_modules", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    def allowed_prefixes(self) -> tuple[str, ...]:
        """Module prefixes from which architecture factories may be imported."""
        return DEFAULT_TRUSTED_MODULES + tuple(self.trusted_modules)
