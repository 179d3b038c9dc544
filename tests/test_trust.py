"""Architecture factories are imported only from trusted modules, and only module classes or
registered functions are ever called; nothing is unpickled or exec'd."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mmstore
from mmstore import ArchSpec, ModelSet, Settings, Store
from mmstore.errors import ArchitectureError, MMStoreError, UntrustedModuleError

from .archs import Small

# Every prefix a forged path could hope for is trusted here: only the object check stands in the way.
GENEROUS = ("torch.nn", "workloads", "tests", "os", "builtins", "subprocess")

REFUSED_FACTORIES = [
    "torch.nn:modules.module.torch.serialization.os.system",
    "torch.nn.modules.module:torch",
    "torch.nn:functional",
    "torch.nn:init",
    "torch.nn:Module.__subclasses__",
    "builtins:eval",
    "builtins:exec",
    "os:system",
    "subprocess:run",
    "workloads:training",
    "workloads.training:np",
    "workloads.datasets:zipfile",
    "workloads.training:TrainRecipe",
    "workloads.training:train_from_bytes",
    "workloads.training:copy",
    "torch.nn:Parameter",
]


@pytest.fixture
def canary(tmp_path):
    """A file that exists only if the forged kwargs' command ever runs."""
    return tmp_path / "CANARY"


def _spec(factory: str, canary: Path) -> ArchSpec:
    # model_construct: a spec as if it had slipped past parsing, so the import check is tested on its own.
    return ArchSpec.model_construct(factory=factory, kwargs={"command": f"touch {canary}"}, source_digest="")


def test_the_canary_would_fire_if_the_command_ran(canary):
    assert os.system(**_spec("os:system", canary).kwargs) == 0
    assert canary.exists()


@pytest.mark.parametrize("factory", REFUSED_FACTORIES)
@pytest.mark.parametrize("entry", ["to_modules", "model", "template"])
def test_stored_factories_that_are_not_module_classes_are_never_called(factory, entry, canary):
    small = ModelSet.from_modules([Small()])
    forged = ModelSet(_spec(factory, canary), small.layout, small.data, GENEROUS)
    call = {"to_modules": forged.to_modules, "model": lambda: forged.model(0), "template": forged.template}[entry]
    with pytest.raises(ArchitectureError) as info:
        call()
    assert "\n" not in str(info.value)
    assert not canary.exists()


@pytest.mark.parametrize("factory", REFUSED_FACTORIES[:3] + ["os:system", "builtins:eval"])
def test_forged_factories_in_a_store_are_refused(local_store, factory, canary):
    small = ModelSet.from_modules([Small()])
    set_id = local_store.save(ModelSet(_spec(factory, canary), small.layout, small.data))
    with pytest.raises(MMStoreError):
        Store.open(local_store.url, Settings()).recover(set_id).to_modules()
    assert not canary.exists()


def test_untrusted_prefixes_are_refused_before_import():
    small = ModelSet.from_modules([Small()])
    for factory in ("os:system", "builtins:eval", "torch:load", "torch.nn_evil:Linear"):
        forged = ModelSet(ArchSpec(factory=factory), small.layout, small.data, Settings().allowed_prefixes())
        with pytest.raises(UntrustedModuleError, match="MMSTORE_TRUSTED_MODULES"):
            forged.to_modules()


@pytest.fixture
def booby_trapped_module(tmp_path, monkeypatch):
    """A module that leaves a marker file if anyone imports it."""
    marker = tmp_path / "imported"
    (tmp_path / "evilpkg").mkdir()
    (tmp_path / "evilpkg" / "__init__.py").write_text(
        textwrap.dedent(f"""
        import pathlib, torch
        pathlib.Path({str(marker)!r}).write_text("imported")
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("evilpkg", None)


def test_untrusted_factory_is_refused_without_import(local_store, booby_trapped_module):
    small = ModelSet.from_modules([Small(), Small()])
    set_id = local_store.save(ModelSet(ArchSpec(factory="evilpkg:Net"), small.layout, small.data))
    recovered = Store.open(local_store.url, Settings()).recover(set_id)
    assert recovered.equals(ModelSet(ArchSpec(factory="evilpkg:Net"), small.layout, small.data))
    with pytest.raises(UntrustedModuleError, match="MMSTORE_TRUSTED_MODULES"):
        recovered.to_modules()
    with pytest.raises(UntrustedModuleError):
        recovered.model(0)
    assert not booby_trapped_module.exists()
    assert "evilpkg" not in sys.modules


def test_trusting_a_prefix_allows_it(local_store, booby_trapped_module):
    small = ModelSet.from_modules([Small()])
    set_id = local_store.save(ModelSet(ArchSpec(factory="evilpkg:Net"), small.layout, small.data))
    trusted = Store.open(local_store.url, Settings(trusted_modules=("evilpkg",)))
    module = trusted.recover(set_id).model(0)
    assert booby_trapped_module.exists()
    assert torch.equal(module.net[0].weight, small.state_dict(0)["net.0.weight"])


def test_trusted_modules_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MMSTORE_TRUSTED_MODULES", "pkg_a, pkg_b.sub")
    # torch.nn from the library, workloads from this project's installed entry point, then the variable.
    assert Settings().allowed_prefixes() == ("torch.nn", "workloads", "pkg_a", "pkg_b.sub")
    assert Settings(trust_installed=False).allowed_prefixes() == ("torch.nn", "pkg_a", "pkg_b.sub")


def test_prefix_match_is_by_dotted_component(local_store):
    small = ModelSet.from_modules([Small()])
    sneaky = ModelSet(ArchSpec(factory="workloads_evil.mod:Net"), small.layout, small.data)
    set_id = local_store.save(sneaky)
    with pytest.raises(UntrustedModuleError):
        Store.open(local_store.url, Settings()).recover(set_id).to_modules()


def test_store_never_unpickles_or_execs():
    sources = sorted(Path(mmstore.__file__).parent.rglob("*.py"))
    assert len(sources) > 20
    source = "\n".join(p.read_text() for p in sources)
    for forbidden in ("import pickle", "pickle.load", "torch.load", "exec(", "eval(", "allow_pickle=True"):
        assert forbidden not in source, forbidden
