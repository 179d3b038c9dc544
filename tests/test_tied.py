"""Tied weights: stored once, recovered as one Parameter under every name, exported loadably."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, load_model

from mmstore import ArchitectureError, ModelSet
from mmstore.export import export_safetensors
from mmstore.layout import Layout

from .archs import TiedLM
from .factories import bits_equal

TOKENS = torch.tensor([[1, 4, 9, 2], [0, 10, 3, 3]])


def _models(n: int, seed: int) -> list[TiedLM]:
    torch.manual_seed(seed)
    return [TiedLM() for _ in range(n)]


def test_layout_records_the_tie_and_stores_the_weight_once():
    model = TiedLM()
    tied = Layout.of(model.state_dict())
    untied = Layout.of({name: t.clone() for name, t in model.state_dict().items()})
    assert tied.ties == {"lm_head.weight": "embed.weight"}
    assert untied.ties == {}
    assert untied.row_nbytes - tied.row_nbytes == model.embed.weight.numel() * 4


def test_tied_set_round_trips_through_a_store(local_store):
    originals = _models(4, seed=7)
    set_id = local_store.save(ModelSet.from_modules(originals), lineage="tied")
    recovered = local_store.recover(set_id)
    assert recovered.layout.ties == {"lm_head.weight": "embed.weight"}
    for original, module in zip(originals, recovered.to_modules()):
        assert module.lm_head.weight is module.embed.weight
        assert torch.equal(module(TOKENS), original(TOKENS))
        for name, t in original.state_dict().items():
            assert bits_equal(module.state_dict()[name], t), name


def test_single_model_and_state_dict_keep_the_tie():
    ms = ModelSet.from_modules(_models(3, seed=8))
    one = ms.model(2)
    assert one.lm_head.weight is one.embed.weight
    assert isinstance(one.embed.weight, torch.nn.Parameter) and one.embed.weight.requires_grad
    sd = ms.state_dict(1)
    assert sd["lm_head.weight"].data_ptr() == sd["embed.weight"].data_ptr()
    assert Layout.of(sd).ties == ms.layout.ties


def test_training_a_recovered_model_moves_both_names():
    module = ModelSet.from_modules(_models(1, seed=9)).model(0)
    before = module.embed.weight.detach().clone()
    module(TOKENS).square().sum().backward()
    with torch.no_grad():
        module.lm_head.weight.sub_(0.1 * module.lm_head.weight.grad)
    assert not torch.equal(module.embed.weight, before)
    assert torch.equal(module.embed.weight, module.lm_head.weight)


def test_stacked_tensors_of_a_tied_layout():
    ms = ModelSet.from_modules(_models(3, seed=10))
    stacked = {name: t.clone() for name, t in ms.tensors().items()}
    assert ModelSet.from_stacked(stacked, ms.arch, ms.layout).equals(ms)
    stacked["lm_head.weight"] = stacked["lm_head.weight"] + 1
    with pytest.raises(ArchitectureError, match="tied but differ"):
        ModelSet.from_stacked(stacked, ms.arch, ms.layout)


def test_a_set_mixing_tied_and_untied_models_is_refused():
    untied = TiedLM()
    untied.lm_head.weight = torch.nn.Parameter(untied.embed.weight.detach().clone())
    with pytest.raises(ArchitectureError, match="ties"):
        ModelSet.from_modules([TiedLM(), untied])


def test_export_writes_the_weight_once_and_loads_back(tmp_path):
    originals = _models(2, seed=11)
    paths = export_safetensors(ModelSet.from_modules(originals), str(tmp_path), "set-id")
    for original, path in zip(originals, paths):
        stored = load_file(path)
        assert "lm_head.weight" not in stored and torch.equal(stored["embed.weight"], original.embed.weight)
        fresh = TiedLM()
        missing, unexpected = load_model(fresh, path)
        assert not missing and not unexpected
        assert fresh.lm_head.weight is fresh.embed.weight
        assert torch.equal(fresh(TOKENS), original(TOKENS))
