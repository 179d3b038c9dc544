"""Architecture factories are imported only from trusted modules; nothing is unpickled or exec'd."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from mmstore import ArchSpec, ModelSet, Settings, Store
from mmstore.errors import UntrustedModuleError

from .archs import Small


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
    assert Settings().allowed_prefixes() == ("workloads", "envs", "torch.nn", "pkg_a", "pkg_b.sub")


def test_prefix_match_is_by_dotted_component(local_store):
    small = ModelSet.from_modules([Small()])
    sneaky = ModelSet(ArchSpec(factory="workloads_evil.mod:Net"), small.layout, small.data)
    set_id = local_store.save(sneaky)
    with pytest.raises(UntrustedModuleError):
        Store.open(local_store.url, Settings()).recover(set_id).to_modules()


def test_store_never_unpickles_or_execs():
    import pathlib

    source = "\n".join(p.read_text() for p in pathlib.Path("mmstore").rglob("*.py"))
    for forbidden in ("import pickle", "pickle.load", "torch.load", "exec(", "eval(", "allow_pickle=True"):
        assert forbidden not in source, forbidden
