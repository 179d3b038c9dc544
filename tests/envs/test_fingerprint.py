"""Environment fingerprints: capture cost and caching, canonical JSON, and comparison severities."""

from __future__ import annotations

import pytest

from envs import Fingerprint, FingerprintError, capture, compare


def _with(fp: Fingerprint, part: str, **changes) -> Fingerprint:
    return fp.model_copy(update={part: getattr(fp, part).model_copy(update=changes)})


def test_capture_is_cached_until_refreshed():
    fresh = capture(refresh=True)
    assert capture() is fresh
    refreshed = capture(refresh=True)
    assert refreshed is not fresh and refreshed.to_json() == fresh.to_json()


def test_capture_describes_this_process():
    import numpy
    import torch

    fp = capture()
    assert fp.torch.version == torch.__version__ and fp.numpy.version == numpy.__version__
    assert fp.torch.num_threads == torch.get_num_threads()
    assert f"torch=={torch.__version__}" in fp.packages
    assert fp.cpu.flags == tuple(sorted(fp.cpu.flags))
    assert fp.torch.build_settings["TORCH_VERSION"] == torch.__version__.split("+")[0]
    assert fp.torch.cpu_capability == torch.backends.cpu.get_cpu_capability()


def test_image_digest_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MMSTORE_IMAGE_DIGEST", "sha256:" + "ab" * 32)
    assert capture(refresh=True).image_digest == "sha256:" + "ab" * 32
    monkeypatch.delenv("MMSTORE_IMAGE_DIGEST")
    assert capture(refresh=True).image_digest is None


def test_json_round_trip_is_canonical():
    fp = capture()
    data = fp.to_json()
    assert Fingerprint.from_json(data) == fp
    assert Fingerprint.from_json(data).to_json() == data
    assert b"\n" not in data and data.index(b'"container"') < data.index(b'"cpu"')


def test_from_json_rejects_other_documents():
    with pytest.raises(FingerprintError, match="capture it again"):
        Fingerprint.from_json(b'{"schema_version": 99}')


def test_identical_fingerprints_are_compatible():
    result = compare(capture(), capture())
    assert result.compatible and result.differences == () and result.blocking == []
    assert result.summary() == "environments are identical"


def test_other_hostname_is_only_information():
    result = compare(capture(), capture().model_copy(update={"hostname": "elsewhere"}))
    assert result.compatible
    assert [(d.field, d.current, d.severity) for d in result.differences] == [("hostname", "elsewhere", "info")]
    assert "hostname" in result.summary()


def test_unrelated_extra_package_does_not_block():
    fp = capture()
    current = fp.model_copy(update={"packages": tuple(sorted(fp.packages + ("left-pad==1.0",)))})
    result = compare(fp, current)
    assert result.compatible
    assert [(d.field, d.recorded, d.current, d.severity) for d in result.differences] == [
        ("packages.left-pad", None, "1.0", "info")
    ]


@pytest.mark.parametrize("changes, field", [
    ({"version": "2.99.0"}, "torch.version"),
    ({"config_digest": "0" * 64}, "torch.config_digest"),
    ({"mkldnn_version": "9.9.9"}, "torch.mkldnn_version"),
    ({"cuda": "12.4"}, "torch.cuda"),
])
def test_other_torch_version_or_build_blocks(changes, field):
    result = compare(capture(), _with(capture(), "torch", **changes))
    assert not result.compatible
    assert [d.field for d in result.blocking] == [field]
    assert field in result.summary() and "INCOMPATIBLE" in result.summary()


def test_other_build_setting_is_named():
    fp = capture()
    settings = {**fp.torch.build_settings, "USE_MKL": "FLIPPED"}
    result = compare(fp, _with(fp, "torch", build_settings=settings))
    assert [d.field for d in result.blocking] == ["torch.build_settings.USE_MKL"]


def test_simd_flags_block_other_flags_and_cpu_model_do_not():
    fp = capture()
    flags = set(fp.cpu.flags)
    changed = (flags ^ {"avx512f"}) | {"made_up_flag"}
    current = _with(fp, "cpu", flags=tuple(sorted(changed)), model="Another CPU")
    result = compare(fp, current)
    severities = {d.field: d.severity for d in result.differences}
    assert not result.compatible
    assert severities == {"cpu.flags.avx512f": "blocking", "cpu.flags.made_up_flag": "info", "cpu.model": "warning"}


def test_thread_counts_warn_and_determinism_env_blocks():
    fp = capture()
    env = {**fp.env, "OMP_NUM_THREADS": "7", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    current = _with(fp, "torch", num_threads=fp.torch.num_threads + 1).model_copy(update={"env": env})
    severities = {d.field: d.severity for d in compare(fp, current).differences}
    assert severities == {
        "env.CUBLAS_WORKSPACE_CONFIG": "blocking", "env.OMP_NUM_THREADS": "warning", "torch.num_threads": "warning",
    }


def test_image_digest_blocks_only_when_both_are_known():
    fp = capture().model_copy(update={"image_digest": "sha256:aa"})
    assert not compare(fp, fp.model_copy(update={"image_digest": "sha256:bb"})).compatible
    assert compare(fp, fp.model_copy(update={"image_digest": None})).compatible


def test_python_version_and_arch_block():
    fp = capture()
    current = _with(fp, "python", version="3.99.0").model_copy(update={"machine": "aarch64"})
    assert {d.field for d in compare(fp, current).blocking} == {"python.version", "machine"}
