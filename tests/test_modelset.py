"""ModelSet: layout, bit-exact state, module materialisation, architecture checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmstore import ArchitectureError, ArchSpec, ModelSet

from .archs import AllDtypes, EveryDtype, Small
from .factories import adversarial_set, bits_equal, random_state


def _small_modules(n: int, seed: int = 0) -> list[Small]:
    torch.manual_seed(seed)
    return [Small() for _ in range(n)]


def test_from_modules_records_class_path_and_layout():
    ms = ModelSet.from_modules(_small_modules(3))
    assert ms.arch.factory == "tests.archs:Small"
    assert ms.arch.source_digest
    assert [t.name for t in ms.layout.tensors] == list(Small().state_dict())
    assert ms.layout.row_nbytes == (5 * 8 + 8 + 8 + 1) * 4
    assert len(ms) == 3 and ms.nbytes == 3 * ms.layout.row_nbytes


def test_mixed_dtypes_pack_without_padding_between_tensors():
    layout = adversarial_set(1, 0).layout
    offsets = sorted((t.offset, t.nbytes) for t in layout.tensors)
    for (a, n), (b, _) in zip(offsets, offsets[1:]):
        assert a + n == b
    for t in layout.tensors:
        assert t.offset % t.itemsize == 0


def test_state_dict_is_bit_exact_for_every_dtype():
    rng_set = adversarial_set(4, seed=3)
    for i in range(4):
        sd = rng_set.state_dict(i)
        assert set(sd) == set(AllDtypes().state_dict())
        row = rng_set.data[i]
        for spec in rng_set.layout.tensors:
            raw = sd[spec.name].contiguous().view(-1).view(torch.uint8).numpy()
            assert np.array_equal(raw, row[spec.offset : spec.offset + spec.nbytes])


def test_to_modules_reproduces_outputs_and_is_independent():
    modules = _small_modules(20)
    ms = ModelSet.from_modules(modules)
    rebuilt = ms.to_modules()
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    for original, copy in zip(modules, rebuilt):
        assert torch.equal(original(x), copy(x))
        assert type(copy) is Small and copy is not original
    with torch.no_grad():
        rebuilt[0].net[0].weight.add_(1.0)
    assert torch.equal(ms.state_dict(0)["net.0.weight"], modules[0].net[0].weight.detach())
    assert not torch.equal(rebuilt[1].net[0].weight, rebuilt[0].net[0].weight)


def test_to_modules_keeps_buffers_parameters_and_grad_flags():
    ms = adversarial_set(3, seed=5)
    module = ms.to_modules()[2]
    assert {n for n, _ in module.named_parameters()} == {n for n, _ in AllDtypes().named_parameters()}
    assert {n for n, _ in module.named_buffers()} == {n for n, _ in AllDtypes().named_buffers()}
    assert all(p.requires_grad for p in module.parameters())
    for name, t in module.state_dict().items():
        assert bits_equal(t, ms.state_dict(2)[name]), name


def test_materialised_modules_train():
    module = ModelSet.from_modules(_small_modules(2)).model(1)
    loss = module(torch.ones(4, 5)).pow(2).sum()
    loss.backward()
    assert module.net[0].weight.grad is not None
    assert module.net[0].weight.data_ptr() % 64 == 0


def test_mixed_architectures_are_refused():
    with pytest.raises(ArchitectureError, match="other tensors"):
        ModelSet.from_modules([Small(), AllDtypes()])
    wide = Small()
    wide.net[0] = torch.nn.Linear(5, 8).double()
    with pytest.raises(ArchitectureError, match=r"net\.0\.weight.*float64"):
        ModelSet.from_modules([Small(), wide])


def test_locally_defined_classes_need_an_explicit_arch():
    class Local(torch.nn.Module):
        pass

    with pytest.raises(ArchitectureError, match="module level"):
        ArchSpec.of(Local())


def test_select_copies_rows_in_order():
    ms = adversarial_set(6, seed=1)
    sub = ms.select([4, 1])
    assert np.array_equal(sub.data, ms.data[[4, 1]])
    sub.data[0, 0] ^= 1
    assert not np.array_equal(sub.data[0], ms.data[4])


REQUIRED_DTYPES = {
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
    torch.complex128, torch.complex64, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint64, torch.uint16, torch.uint8, torch.bool,
}


def test_every_dtype_round_trips_bit_for_bit_through_a_store_state_dicts_and_modules(local_store):
    rng = np.random.default_rng(11)
    originals = []
    for _ in range(3):
        m = EveryDtype()
        random_state(m, rng)
        originals.append(m)
    assert {t.dtype for t in originals[0].state_dict().values()} >= REQUIRED_DTYPES
    ms = ModelSet.from_modules(originals)
    stored = local_store.recover(local_store.save(ms))
    assert stored.equals(ms)
    for i, (original, module) in enumerate(zip(originals, stored.to_modules())):
        for name, t in original.state_dict().items():
            assert bits_equal(stored.state_dict(i)[name], t), name
            assert bits_equal(module.state_dict()[name], t), name


def test_zero_size_tensors_round_trip():
    built = adversarial_set(2, seed=4)
    ms = ModelSet(built.arch, built.layout, built.data, ("tests",))
    for module in [ms.model(0), *ms.to_modules()]:
        assert module.empty.shape == (0,) and module.empty.dtype == torch.float32
        assert isinstance(module.empty, torch.nn.Parameter)
        assert module.empty2d.shape == (3, 0) and module.empty2d.dtype == torch.int16
    sd = ms.state_dict(1)
    assert sd["empty"].shape == (0,) and sd["empty2d"].shape == (3, 0)
    assert ms.layout.spec("empty").nbytes == 0


class Outer:
    """A namespace holding a module class: readers cannot import nested classes."""

    class Inner(torch.nn.Module):
        """An empty module."""


def test_nested_classes_need_module_level():
    with pytest.raises(ArchitectureError, match="module level"):
        ArchSpec.of(Outer.Inner())
