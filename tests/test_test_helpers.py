"""The test suite's own helpers (tests/conftest.py): weights lookup and build-once fixtures."""

import os

import pytest

from . import conftest


@pytest.fixture
def no_weights_anywhere(monkeypatch, tmp_path):
    """Every place the published weights are looked for is an empty folder."""
    monkeypatch.setenv("DEEPLIGHT_WEIGHTS_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(conftest, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.delenv(conftest.REQUIRE_WEIGHTS_ENV, raising=False)
    return tmp_path


def test_absent_weights_skip_with_the_places_searched(no_weights_anywhere):
    with pytest.raises(pytest.skip.Exception) as info:
        conftest.find_published_2d_weights()
    message = str(info.value)
    for folder in ("env", "cache/deeplight-bids/weights", "shared/weights"):
        assert str(no_weights_anywhere / folder) in message
    assert "deeplight-bids weights fetch 2D-pretrained" in message


def test_absent_weights_fail_where_required(no_weights_anywhere, monkeypatch):
    monkeypatch.setenv(conftest.REQUIRE_WEIGHTS_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="DEEPLIGHT_REQUIRE_WEIGHTS=1"):
        conftest.find_published_2d_weights()


def test_a_broken_copy_fails_instead_of_skipping(no_weights_anywhere):
    from deeplight_bids.models.weights import REGISTRY

    folder = no_weights_anywhere / "cache" / "deeplight-bids" / "weights"  # the weights-fetch cache
    folder.mkdir(parents=True)
    (folder / REGISTRY["2D-pretrained"].filename).write_bytes(b"not the weights")
    with pytest.raises(pytest.fail.Exception, match="has SHA-256"):
        conftest.find_published_2d_weights()


def test_build_once_builds_once_and_returns_the_same_value(tmp_path_factory, monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "made.txt").write_text("x")
        return {"path": folder / "made.txt"}

    name = f"helper-test-{os.getpid()}"
    first = conftest.build_once(tmp_path_factory, name, build)
    second = conftest.build_once(tmp_path_factory, name, build)
    assert first == second and first["path"].read_text() == "x"
    assert len(calls) == 1
