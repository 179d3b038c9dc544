import pytest

from workloads import FFNN48, FFNN69, CifarConv, last_layer_prefixes, parameter_count, seeded_model


@pytest.mark.parametrize(("arch", "count"), [(FFNN48, 4_993), (FFNN69, 10_075)])
def test_ffnn_parameter_counts_are_exact(arch, count):
    assert parameter_count(arch()) == count


def test_conv_parameter_count_within_one_percent():
    assert abs(parameter_count(CifarConv()) - 6_882) <= 0.01 * 6_882


@pytest.mark.parametrize("arch", [FFNN48, FFNN69, CifarConv])
def test_last_layers_name_existing_parameters(arch):
    names = [n for n, _ in arch().named_parameters()]
    chosen = [n for n in names if n.startswith(last_layer_prefixes(arch))]
    assert 0 < len(chosen) < len(names)


def test_seeded_model_is_reproducible_and_leaves_global_rng_alone():
    import torch

    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = seeded_model(FFNN48, 5), seeded_model(FFNN48, 5)
    assert torch.rand(1) == expected
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
