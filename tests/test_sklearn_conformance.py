"""The scikit-learn estimator by scikit-learn's own rules: every check_estimator check, pandas output, dtypes,
options that do not apply, and no temporary folders left behind."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from injflow.sklearn import InjectiveFlowEstimator

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = dict(max_epochs=1, hidden_features=(8,), batch_size=64)


def _x(n: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.uniform(-2, 2, n)
    return np.stack([t, np.sin(2 * t), 0.05 * rng.normal(size=n)], 1)


#: The checks the estimator failed before (wording, dtypes, one feature): in the default suite; all of them under slow.
_KEY_CHECKS = ("check_n_features_in_after_fitting", "check_transformer_preserve_dtypes", "check_fit2d_1feature",
               "check_fit2d_1sample", "check_dont_overwrite_parameters", "check_estimators_pickle")


def test_the_checks_it_used_to_fail_pass():
    import sklearn.utils.estimator_checks as checks

    for name in _KEY_CHECKS:
        getattr(checks, name)("InjectiveFlowEstimator", InjectiveFlowEstimator(latent_dim=1, **TINY))


@pytest.mark.slow
def test_every_check_estimator_check_passes():
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(InjectiveFlowEstimator(latent_dim=1, **TINY), on_fail=None)
    failed = [f"{r['check_name']}: {str(r['exception']).splitlines()[0][:200]}" for r in results if r["status"] == "failed"]
    assert len(results) >= 40 and not failed, failed


def test_pandas_output_feature_names_and_dtypes():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(_x(), columns=["t", "sin", "noise"])
    est = InjectiveFlowEstimator(latent_dim=2, **TINY).set_output(transform="pandas").fit(frame)
    assert list(est.feature_names_in_) == ["t", "sin", "noise"]
    assert list(est.get_feature_names_out()) == ["injectiveflowestimator0", "injectiveflowestimator1"]
    codes = est.transform(frame)
    assert isinstance(codes, pd.DataFrame) and list(codes.columns) == list(est.get_feature_names_out())
    assert codes.dtypes.tolist() == [np.float64, np.float64]
    plain = InjectiveFlowEstimator(latent_dim=2, **TINY).fit(_x())
    assert plain.transform(_x()).dtype == np.float64 and plain.transform(_x().astype(np.float32)).dtype == np.float32
    assert plain.inverse_transform(plain.transform(_x())).dtype == np.float64
    assert plain.reconstruction_error(_x()).dtype == np.float64 and plain.sample(3).dtype == np.float64
    np.testing.assert_allclose(plain.transform(_x()), codes.to_numpy(), rtol=1e-6)  # same seed, same model
    with pytest.raises(ValueError, match="X has 2 features, but InjectiveFlowEstimator is expecting 3"):
        plain.transform(_x()[:, :2])
    with pytest.raises(ValueError, match="expects latent codes of latent_dim=2"):
        plain.inverse_transform(np.zeros((2, 3)))


@pytest.mark.parametrize("params, message", [
    ({"architecture": "toy_resnet", "hidden_features": 16, "method": "ae"}, None),  # toy_resnet has hidden_features
    ({"architecture": "tabular", "hidden_features": (16,)}, None),
    ({"method": "ae", "beta": 3.0}, "beta=3.0 does not apply: method 'ae' has no reconstruction weight"),
])
def test_options_that_do_not_apply_are_refused(params, message):
    from injflow.nets.registry import architecture_options

    est = InjectiveFlowEstimator(latent_dim=1, max_epochs=1, batch_size=64, **params)
    if message is None:  # architectures with hidden widths take them
        assert "hidden_features" in architecture_options(params["architecture"])
        assert est._config().model.options["hidden_features"] in (16, [16])
        return
    with pytest.raises(ValueError, match=message):
        est.fit(_x())


def test_hidden_features_refused_for_an_architecture_without_them(monkeypatch):
    import injflow.nets.registry as nets

    monkeypatch.setattr(nets, "architecture_options", lambda name: {"n_blocks": 2})
    with pytest.raises(ValueError, match=r"hidden_features=\(8,\) does not apply: architecture 'mlp' has no hidden_features"):
        InjectiveFlowEstimator(latent_dim=1, **TINY).fit(_x())


def test_one_row_and_too_few_features_are_refused():
    with pytest.raises(ValueError, match="1 sample"):
        InjectiveFlowEstimator(latent_dim=1, **TINY).fit(_x()[:1])
    with pytest.raises(ValueError, match="n_features=3"):
        InjectiveFlowEstimator(latent_dim=3, **TINY).fit(_x())


def test_no_temporary_run_folder_is_left_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    est = InjectiveFlowEstimator(latent_dim=1, **TINY).fit(_x())
    assert est.run_dir_ is None and list(tmp_path.iterdir()) == []
    assert est.transform(_x()).shape == (60, 1)  # the model lives on without its folder
    with pytest.raises(ValueError, match="too large to train on"):  # an error inside fit: the folder goes all the same
        InjectiveFlowEstimator(latent_dim=1, **TINY).fit(_x() * 1e16)
    assert list(tmp_path.iterdir()) == []
    kept = InjectiveFlowEstimator(latent_dim=1, run_dir=str(tmp_path / "kept"), **TINY).fit(_x())
    assert kept.run_dir_ == tmp_path / "kept" and (tmp_path / "kept" / "model.pt").is_file()
