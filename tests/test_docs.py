"""The documentation: the site builds with warnings as errors, and its LRP how-to example works."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
# The container's test image holds tests/ but not docs/ (.dockerignore): nothing to check there.
pytestmark = pytest.mark.skipif(not (DOCS / "conf.py").is_file(), reason="docs/ is not in this copy of the repository")


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    for module in ("sphinx", "furo", "sphinxarg"):
        pytest.importorskip(module, reason="the docs extra is not installed: pip install '.[docs]'")
    html, doctrees = tmp_path / "html", tmp_path / "doctrees"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(doctrees)]
    result = subprocess.run([*command, str(DOCS), str(html)], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"sphinx failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
    # The generated parts are there: the CLI reference from the parser, the exit codes from the code.
    cli = (html / "cli.html").read_text()
    assert "--participant-label" in cli and "--finetune" in cli and "--n-subjects" in cli
    exit_codes = (html / "exit-codes.html").read_text()
    assert "partial success" in exit_codes and "InputDataError" in exit_codes and "143" in exit_codes
    assert "LRPAnalyzer" in (html / "api.html").read_text()


@pytest.fixture
def gamma_example():
    """``docs/examples/gamma_rule.py`` imported; its composite unregistered afterwards."""
    keras = pytest.importorskip("keras")  # noqa: F841
    from deeplight_bids.lrp import composites

    spec = importlib.util.spec_from_file_location("gamma_rule", DOCS / "examples" / "gamma_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    composites.COMPOSITES.pop("gamma_example", None)


def make_dense(rng, n_in=7, n_out=4):
    import keras

    layer = keras.layers.Dense(n_out, activation="relu")
    layer.build((None, n_in))
    kernel = rng.normal(0.0, 0.5, size=(n_in, n_out)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, size=n_out).astype(np.float32)
    layer.set_weights([kernel, bias])
    return layer, kernel.astype(np.float64), bias.astype(np.float64)


def gamma_rule_numpy(kernel, bias, x, relevance_out, gamma):
    """The gamma rule written from its formula on a dense layer, in float64."""
    kernel = kernel + gamma * np.maximum(kernel, 0)
    bias = bias + gamma * np.maximum(bias, 0)
    z = x @ kernel + bias
    return x * ((relevance_out / z) @ kernel.T)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 2.0])
def test_gamma_rule_matches_numpy(gamma_example, gamma):
    rng = np.random.default_rng(42)
    layer, kernel, bias = make_dense(rng)
    x = rng.normal(size=(3, 7)).astype(np.float32)
    relevance_out = rng.normal(size=(3, 4)).astype(np.float32)

    actual = np.asarray(gamma_example.Gamma(gamma)(layer, x, relevance_out))
    expected = gamma_rule_numpy(kernel, bias, x.astype(np.float64), relevance_out.astype(np.float64), gamma)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6)


def test_gamma_composite_explains_a_model(gamma_example):
    import keras

    from deeplight_bids.lrp import LRPAnalyzer

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(3)])
    analyzer = LRPAnalyzer(model, composite="gamma_example")
    assert [type(rule).__name__ for _, rule in analyzer.layer_rules] == ["Flat", "Gamma"]
    assert analyzer.description["layers"][1]["gamma"] == 0.25
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    logits, relevance = analyzer.explain(x)
    assert logits.shape == (4, 3) and relevance.shape == (4, 6)
    assert np.isfinite(relevance).all() and np.abs(relevance).sum() > 0
    with pytest.raises(ValueError, match="gamma >= 0"):
        gamma_example.Gamma(-1.0)


def test_readme_names_every_option():
    """README.md lists every option of ``deeplight-bids`` (the meanings are in --help and docs/cli.rst)."""
    from deeplight_bids.cli.parser import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = []
    for action in build_parser()._actions:
        names = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
        if names and not any(f"`{name}" in readme for name in names):
            missing.append(names[0])
    assert not missing, f"options missing from README.md: {missing}"
