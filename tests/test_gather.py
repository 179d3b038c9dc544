"""Collecting modules without state_dict(): the same bytes as the general path, or the general path itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mmstore import ArchitectureError, ArchSpec, ModelSet
from mmstore import gather as gather_module
from mmstore.gather import gather
from mmstore.layout import Layout
from workloads.models import FFNN48

from .archs import AllDtypes, EveryDtype, Small, TiedLM
from .factories import bits_equal, random_state


def _random_models(cls: type[nn.Module], n: int, seed: int) -> list[nn.Module]:
    rng = np.random.default_rng(seed)
    models = [cls() for _ in range(n)]
    for m in models:
        random_state(m, rng)
    return models


def _general(modules: list[nn.Module]) -> ModelSet:
    return ModelSet.from_state_dicts([m.state_dict() for m in modules], ArchSpec.of(modules[0]))


def _gathered(modules: list[nn.Module]) -> tuple[bool, np.ndarray]:
    layout = Layout.of(modules[0].state_dict())
    data = np.zeros((len(modules), layout.row_nbytes), dtype=np.uint8)
    return gather(modules, layout, data), data


@pytest.mark.parametrize("cls", [AllDtypes, EveryDtype, TiedLM, FFNN48])
def test_walk_gives_the_general_paths_bytes(cls):
    models = _random_models(cls, 7, seed=11)
    taken, data = _gathered(models)
    assert taken
    reference = _general(models)
    assert np.array_equal(data, reference.data)
    fast = ModelSet.from_modules(models)
    assert fast.equals(reference) and fast.layout.ties == reference.layout.ties


def test_chunks_of_one_model_copy_the_same(monkeypatch):
    models = _random_models(AllDtypes, 9, seed=12)
    monkeypatch.setattr(gather_module, "_STAGING_NBYTES", 24)  # one model per chunk
    taken, data = _gathered(models)
    assert taken and np.array_equal(data, _general(models).data)


def test_tied_weights_are_written_once_and_recovered_tied():
    models = _random_models(TiedLM, 4, seed=13)
    fast = ModelSet.from_modules(models)
    assert fast.layout.ties == {"lm_head.weight": "embed.weight"}
    for original, module in zip(models, fast.to_modules()):
        assert module.lm_head.weight is module.embed.weight
        assert bits_equal(module.embed.weight.detach(), original.embed.weight.detach())


class Transposed(nn.Module):
    """A parameter stored transposed (non-contiguous), and a non-persistent buffer state_dict leaves out."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3).t())
        self.register_buffer("scratch", torch.ones(5), persistent=False)
        self.register_buffer("steps", torch.tensor(3))


def test_non_contiguous_parameters_and_non_persistent_buffers():
    torch.manual_seed(3)
    models = [Transposed() for _ in range(5)]
    assert not models[0].weight.is_contiguous()
    taken, data = _gathered(models)
    assert taken
    fast = ModelSet.from_modules(models)
    assert [spec.name for spec in fast.layout.tensors] == ["weight", "steps"]
    assert np.array_equal(data, _general(models).data) and fast.equals(_general(models))
    assert torch.equal(fast.state_dict(4)["weight"], models[4].weight.detach())


class WithExtraState(nn.Linear):
    """A module whose state dict holds an extra entry beyond its parameters."""

    def __init__(self) -> None:
        super().__init__(2, 2)

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([7, 8])

    def set_extra_state(self, state: torch.Tensor) -> None:
        """Nothing to restore: the extra state is constant."""


def _bump_bias(module, state_dict, prefix, local_metadata) -> None:
    state_dict[prefix + "net.2.bias"] = state_dict[prefix + "net.2.bias"] + 1


def test_extra_state_and_hooks_take_the_general_path():
    torch.manual_seed(4)
    extra = [WithExtraState() for _ in range(3)]
    assert not _gathered(extra)[0]
    assert "_extra_state" in [spec.name for spec in ModelSet.from_modules(extra).layout.tensors]
    hooked = [Small() for _ in range(3)]
    for m in hooked:
        m.register_state_dict_post_hook(_bump_bias)
    assert not _gathered(hooked)[0]
    fast = ModelSet.from_modules(hooked)
    assert torch.equal(fast.state_dict(1)["net.2.bias"], hooked[1].net[2].bias.detach() + 1)


def test_the_same_module_twice_is_two_equal_rows():
    torch.manual_seed(5)
    one, other = Small(), Small()
    models = [one, other, one]
    taken, data = _gathered(models)
    assert taken and np.array_equal(data[0], data[2]) and not np.array_equal(data[0], data[1])


def _extra_buffer(models: list[Small]) -> None:
    models[2].net[0].register_buffer("count", torch.tensor(1))


def _other_dtype(models: list[Small]) -> None:
    models[1].net[2].bias = nn.Parameter(models[1].net[2].bias.double())


def _transposed_shape(models: list[Small]) -> None:
    models[2].net[0].weight = nn.Parameter(models[2].net[0].weight.detach().reshape(5, 8))


def _no_bias(models: list[Small]) -> None:
    models[1].net[2].bias = None


def _other_class(models: list[Small]) -> None:
    models[1].net[1] = nn.Tanh()


@pytest.mark.parametrize("damage, message", [
    (_extra_buffer, "other tensors than the set"),
    (_other_dtype, "float64"),
    (_transposed_shape, r"float32\[5, 8\]"),
    (_no_bias, "other tensors than the set"),
])
def test_models_that_differ_are_refused_as_before(damage, message):
    torch.manual_seed(6)
    models = [Small() for _ in range(4)]
    damage(models)
    assert not _gathered(models)[0]
    with pytest.raises(ArchitectureError, match=message):
        ModelSet.from_modules(models)


class Pair(nn.Module):
    """Two layers of one shape, which a model may tie."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)


@pytest.mark.parametrize("same_object", [True, False])
def test_a_tie_only_one_model_has_is_refused_as_before(same_object):
    torch.manual_seed(8)
    models = [Pair() for _ in range(3)]
    # The same Parameter, or a second Parameter over the very same view: state_dict() reports both as a tie.
    models[2].b.weight = models[2].a.weight if same_object else nn.Parameter(models[2].a.weight.data)
    assert not _gathered(models)[0]
    with pytest.raises(ArchitectureError, match="ties other tensors"):
        ModelSet.from_modules(models)


def test_a_different_activation_class_falls_back_and_keeps_the_bytes():
    torch.manual_seed(7)
    models = [Small() for _ in range(3)]
    _other_class(models)
    assert not _gathered(models)[0]
    assert ModelSet.from_modules(models).equals(_general(models))


def test_models_without_data_are_an_architecture_error():
    with torch.device("meta"):
        models = [Small() for _ in range(2)]
    assert not _gathered(models)[0]
    with pytest.raises(ArchitectureError, match="cannot be copied into memory"):
        ModelSet.from_modules(models)
