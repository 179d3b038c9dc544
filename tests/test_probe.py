"""The probing tool: layer-by-layer records, divergence finding, the file format and the CLI."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
from torch import nn

from mmstore import ModelSet
from mmstore import cli
from mmstore.probe import ROOT, ProbeError, ProbeRecord, compare, record
from mmstore.probe_cli import register

from .archs import Small


class Noise(nn.Module):
    """Adds noise from a generator seeded by the OS on every call: torch.manual_seed cannot tame it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        return x + 1e-3 * torch.rand(x.shape, generator=generator)


def _model(*middle: nn.Module) -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), *middle, nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 1))


def _inputs() -> torch.Tensor:
    return torch.randn(16, 5, generator=torch.Generator().manual_seed(7))


def test_record_captures_every_layer_in_execution_order():
    model = _model()
    probe = record(model, _inputs(), seed=0)
    forward = [e.name for e in probe.entries if e.phase == "forward"]
    backward = [e.name for e in probe.entries if e.phase == "backward"]
    grads = [e.name for e in probe.entries if e.phase == "param_grad"]
    assert forward == ["0", "1", "2", "3", "4", ROOT]
    assert backward == [ROOT, "4", "3", "2", "1", "0"]
    assert grads == [name for name, _ in model.named_parameters()]
    assert [e.index for e in probe.entries] == list(range(len(probe.entries)))
    assert probe.entries[0].shape == (16, 8) and probe.entries[0].dtype == "float32"
    assert model._forward_hooks == {} and model[0]._backward_hooks == {}


def test_stats_describe_the_tensor():
    model = _model()
    out = model(_inputs()).detach()
    entry = next(e for e in record(model, _inputs(), seed=0).entries if e.name == ROOT and e.phase == "forward")
    assert entry.stats.mean == pytest.approx(out.double().mean().item())
    assert entry.stats.abs_max == pytest.approx(out.abs().max().item()) and entry.stats.nan_count == 0


def test_deterministic_model_records_identically():
    model = _model(nn.Dropout(0.5))
    diff = compare(record(model, _inputs(), seed=3), record(model, _inputs(), seed=3))
    assert not diff.diverged and diff.n_differing == 0 and diff.mismatched_inputs == ()
    assert "identical" in diff.summary()


def test_unseeded_layer_is_named_as_first_divergence():
    model = _model(Noise())
    diff = compare(record(model, _inputs(), seed=0), record(model, _inputs(), seed=0))
    assert diff.diverged and diff.mismatched_inputs == ()
    assert (diff.first.name, diff.first.module_type, diff.first.phase) == ("2", "Noise", "forward")
    assert 0 < diff.first.stat_delta < 1e-2
    assert diff.n_differing > 1 and "layer '2' (Noise, forward)" in diff.summary()


def test_different_inputs_are_reported_as_expected_divergence():
    model = _model()
    diff = compare(record(model, _inputs(), seed=0), record(model, _inputs() + 1, seed=1))
    assert diff.mismatched_inputs == ("input", "seed")
    assert diff.first.name == "0" and "expected" in diff.summary()


def test_other_structure_is_a_divergence():
    model = _model()
    a = record(model, _inputs(), seed=0)
    b = record(nn.Sequential(*model, nn.Identity()), _inputs(), seed=0)
    diff = compare(a, b)
    assert diff.mismatched_inputs == ()
    assert (diff.first.index, diff.first.name) == (5, ROOT) and "has 5 (forward) here" in diff.first.reason


def test_file_round_trip_keeps_nan_statistics(tmp_path):
    inputs = _inputs()
    inputs[0, 0] = float("nan")
    probe = record(_model(), inputs, seed=0, meta={"note": "nan input"})
    probe.save(tmp_path / "p.json")
    json.loads((tmp_path / "p.json").read_text())  # strict JSON: NaN is written as a string
    loaded = ProbeRecord.load(tmp_path / "p.json")
    assert loaded.model_dump_json() == probe.model_dump_json()
    assert not compare(loaded, probe).diverged and loaded.entries[0].stats.nan_count == 8


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(ProbeError, match="mmstore probe record"):
        ProbeRecord.load(tmp_path / "x.json")
    with pytest.raises(ProbeError, match="check the path"):
        ProbeRecord.load(tmp_path / "missing.json")


def test_inplace_layers_get_advice():
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(inplace=True), nn.Linear(8, 1))
    with pytest.raises(ProbeError, match="inplace=False"):
        record(model, _inputs(), seed=0)


def test_handlers_through_a_registered_parser(local_store, tmp_path, capsys):
    torch.manual_seed(0)
    set_id = local_store.save(ModelSet.from_modules([Small() for _ in range(3)]))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true")
    parser = argparse.ArgumentParser(parents=[common])
    register(parser.add_subparsers(dest="command", required=True), common)
    args = parser.parse_args(["probe", "record", set_id[:10], "--model", "2", "--input-shape", "4,5",
                              "--out", str(tmp_path / "a.json")])
    args.func(local_store, args)
    probe = ProbeRecord.load(tmp_path / "a.json")
    assert probe.meta == {"set": set_id, "model": 2, "input_shape": "4,5"}
    assert probe.params_digest != record(local_store.recover(set_id, [0]).model(0), _inputs()[:4], 0).params_digest


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def probe_cli(monkeypatch):
    """`mmstore` with the probe commands, whether or not build_parser registers them itself."""
    build = cli.build_parser
    monkeypatch.setenv("MMSTORE_TRUSTED_MODULES", "tests")

    def with_probe(settings):
        parser = build(settings)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "probe" not in sub.choices:
            common = argparse.ArgumentParser(add_help=False)
            common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
            register(sub, common)
        return parser

    monkeypatch.setattr(cli, "build_parser", with_probe)


def test_cli_record_and_compare(probe_cli, local_store, tmp_path, capsys):
    torch.manual_seed(0)
    set_id = local_store.save(ModelSet.from_modules([Small() for _ in range(2)]), lineage="cells")
    files = [str(tmp_path / f"{name}.json") for name in "abc"]
    for out, seed in zip(files, (0, 0, 1)):
        code, out_text, _ = _main(capsys, "--store", local_store.url, "probe", "record", "cells", "--model", "1",
                                  "--input-shape", "32,5", "--seed", str(seed), "--out", out)
        assert code == 0 and "recorded" in out_text
    code, out, _ = _main(capsys, "--store", str(tmp_path / "nowhere"), "probe", "compare", files[0], files[1])
    assert code == 0 and "identical" in out
    code, out, err = _main(capsys, "probe", "compare", files[0], files[2], "--json")
    report = json.loads(out)
    assert code == 1 and report["diverged"] and report["mismatched_inputs"] == ["input", "seed"]
    assert "different inputs" in err
    assert ProbeRecord.load(files[0]).meta["set"] == set_id


def test_cli_bad_input_shape(probe_cli, local_store, tmp_path, capsys):
    local_store.save(ModelSet.from_modules([Small()]), lineage="cells")
    code, _, err = _main(capsys, "--store", local_store.url, "probe", "record", "cells", "--input-shape", "32,x",
                         "--out", str(tmp_path / "a.json"))
    assert code == 1 and "positive sizes" in err
