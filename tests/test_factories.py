"""Factories: strict paths, bounded kwargs, registered functions, and a meta-device build before any real one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from mmstore import ArchitectureError, ArchSpec, ModelSet, register_factory
from mmstore.arch import TRAINER_KIND, import_trusted
from mmstore.errors import UntrustedModuleError

from .archs import Small, TiedLM, small_of_width, unregistered_factory

TRUSTED = ("torch.nn", "workloads", "tests")
ROOT = Path(__file__).resolve().parent.parent


def _forged(factory: str, layout_of: torch.nn.Module, **kwargs) -> ModelSet:
    """A set whose stored architecture claims `factory(**kwargs)` but whose layout is `layout_of`'s."""
    real = ModelSet.from_modules([layout_of])
    return ModelSet(ArchSpec(factory=factory, kwargs=kwargs), real.layout, real.data, TRUSTED)


@pytest.mark.parametrize(
    "factory",
    ["torch.nn:modules.module.torch", "torch.nn:Module.__subclasses__", "torch.nn", ":Linear", "torch..nn:Linear",
     "torch.nn:Linear ", "torch.nn:Lin\near", "1torch:Linear", "a" * 250 + ":Linear"],
)
def test_factory_paths_are_parsed_strictly(factory):
    with pytest.raises(ValidationError):
        ArchSpec(factory=factory)
    with pytest.raises(ArchitectureError, match="package.module:Name"):
        import_trusted(factory, TRUSTED)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"s": "x" * (4 << 10 + 1)}, "longer than"),
        ({"a": [[[[[[[[1]]]]]]]]}, "deeper than"),
        ({f"k{i}": "y" * 4000 for i in range(20)}, "exceed"),
        ({"x": float("nan")}, "finite"),
        ({"x": [1.0, float("inf")]}, "finite"),
        ({"device": "cpu"}, "device"),
    ],
)
def test_kwargs_are_bounded_json(kwargs, reason):
    with pytest.raises(ValidationError, match=reason):
        ArchSpec(factory="torch.nn:Linear", kwargs=kwargs)


def test_kwargs_within_the_bounds_are_kept():
    kwargs = {"a": [[[[[[[1]]]]]]], "s": "x" * 4096, "f": 0.5, "b": True, "n": None}
    assert ArchSpec(factory="torch.nn:Linear", kwargs=kwargs).kwargs == kwargs


@pytest.mark.parametrize("digest", ["0" * 63, "A" * 64, "g" * 64, "0" * 65])
def test_source_digest_is_empty_or_hex(digest):
    with pytest.raises(ValidationError):
        ArchSpec(factory="torch.nn:Linear", source_digest=digest)


def test_registered_factory_functions_build_sets():
    spec = ArchSpec.of(small_of_width, width=6)
    assert spec.factory == "tests.archs:small_of_width" and spec.kwargs == {"width": 6}
    torch.manual_seed(0)
    ms = ModelSet.from_modules([small_of_width(6) for _ in range(3)], spec)
    for i, module in enumerate(ModelSet(ms.arch, ms.layout, ms.data, TRUSTED).to_modules()):
        assert torch.equal(module[0].weight, ms.state_dict(i)["0.weight"])


def test_unregistered_functions_are_refused_without_being_called():
    with pytest.raises(UntrustedModuleError, match="register_factory"):
        ArchSpec.of(unregistered_factory, width=6)
    forged = _forged("tests.archs:unregistered_factory", small_of_width(8), width=8)
    with pytest.raises(UntrustedModuleError, match="not called"):
        forged.template()


def test_registration_needs_a_module_level_function():
    def local(width: int) -> torch.nn.Module:
        return small_of_width(width)

    with pytest.raises(ArchitectureError, match="module level"):
        register_factory(local)
    with pytest.raises(ArchitectureError, match="module level"):
        register_factory(Small)


def test_trainers_must_be_registered_as_trainers():
    assert callable(import_trusted("workloads.training:train_from_bytes", TRUSTED, TRAINER_KIND))
    for path in ("workloads.training:train", "workloads.models:FFNN48", "tests.archs:small_of_width"):
        with pytest.raises(UntrustedModuleError, match="register_trainer"):
            import_trusted(path, TRUSTED, TRAINER_KIND)
    with pytest.raises(UntrustedModuleError, match="register_factory"):
        import_trusted("workloads.training:train_from_bytes", TRUSTED)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_features": 5}, "TypeError"),
        ({"in_features": 5, "out_features": 8, "bogus": 1}, "TypeError"),
        ({"in_features": -5, "out_features": 8}, "RuntimeError"),
    ],
)
def test_factory_failures_are_one_line_architecture_errors(kwargs, match):
    forged = _forged("torch.nn:Linear", torch.nn.Linear(5, 8), **kwargs)
    with pytest.raises(ArchitectureError, match=match) as info:
        forged.to_modules()
    assert "\n" not in str(info.value) and "kwargs" in str(info.value)


def test_a_factory_that_disagrees_with_the_layout_is_refused_on_meta():
    forged = _forged("torch.nn:Linear", torch.nn.Linear(5, 8), in_features=5, out_features=9)
    with pytest.raises(ArchitectureError, match=r"float32\[9, 5\].*float32\[8, 5\]"):
        forged.model(0)
    with pytest.raises(ArchitectureError, match="2 tensors, the set 1"):
        _forged("torch.nn:Linear", torch.nn.Linear(5, 8, bias=False), in_features=5, out_features=8).model(0)
    with pytest.raises(ArchitectureError, match="'weight' is .*the set expects 'net.0.weight'"):
        _forged("torch.nn:Linear", Small(), in_features=5, out_features=8).model(0)


def test_a_factory_that_builds_on_meta_but_ties_differently_is_refused():
    untied = TiedLM()
    untied.lm_head.weight = torch.nn.Parameter(untied.embed.weight.detach().clone())
    real = ModelSet.from_modules([untied], ArchSpec.of(TiedLM))
    with pytest.raises(ArchitectureError, match="ties"):
        ModelSet(real.arch, real.layout, real.data, TRUSTED).template()


def test_a_huge_claimed_module_is_refused_without_allocating():
    """In a process limited to 2 GiB of address space, a 4 TB Linear is refused in milliseconds."""
    script = textwrap.dedent("""
        import json, resource, sys, time
        import torch
        from mmstore import ArchSpec, ArchitectureError, ModelSet
        real = ModelSet.from_modules([torch.nn.Linear(5, 8)])
        spec = ArchSpec(factory="torch.nn:Linear", kwargs={"in_features": 10**6, "out_features": 10**6})
        forged = ModelSet(spec, real.layout, real.data, ("torch.nn",))
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            forged.to_modules()
            result = "built"
        except ArchitectureError as exc:
            result = str(exc)
        seconds = time.perf_counter() - start
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({"result": result, "seconds": seconds, "grown_kib": grown}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert "1000000" in outcome["result"] and "the set expects" in outcome["result"], outcome
    assert outcome["seconds"] < 0.5, outcome
    assert outcome["grown_kib"] < 64 << 10, outcome
