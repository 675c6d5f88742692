"""Scaling that travels with the model (injflow.scaling): fitted statistics, the exact change of variables of the
user-unit density against full float64 Jacobians, what ``auto`` means, and the warning that names columns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from injflow.estimators import decoder_log_volume
from injflow.scaling import (
    AffineScaler,
    fit_data_scaler,
    fit_scaler,
    resolve_standardize,
    scale_splits,
    scale_warning,
    scaled_maps,
)


def _table(n: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 50.0, 0.01, 3000.0], dtype=torch.float64) \
        + torch.tensor([0.0, -20.0, 5.0, 1e4], dtype=torch.float64)


def test_features_and_global_statistics_match_numpy():
    x = _table()
    x[:, 2] = 7.0  # a constant column: centred, never divided by zero
    features = fit_scaler(x, "features")
    ref = x.numpy()
    np.testing.assert_allclose(features.shift.numpy(), ref.mean(0), rtol=1e-6)
    np.testing.assert_allclose(features.scale.numpy()[[0, 1, 3]], ref.std(0)[[0, 1, 3]], rtol=1e-6)
    assert float(features.scale[2]) == 1.0 and float(features.shift[2]) == 7.0
    scaled = features(x.float()).double()
    np.testing.assert_allclose(scaled.mean(0).numpy(), 0, atol=1e-3)
    np.testing.assert_allclose(scaled.std(0, unbiased=False).numpy()[[0, 1, 3]], 1, rtol=1e-4)
    whole = fit_scaler(x, "global")
    assert torch.all(whole.shift == whole.shift[0]) and math.isclose(float(whole.scale[0]), float(ref.std()), rel_tol=1e-6)
    images = torch.rand(10, 1, 2, 2, dtype=torch.float64) * 16
    ranged = fit_scaler(images, "range", value_range=[0, 16])
    assert ranged.shift.shape == (1, 2, 2) and torch.allclose(ranged(images.float()), (images / 16).float())


def test_round_trip_buffers_and_identity():
    x = _table().float()
    scaler = fit_scaler(x, "features")
    assert torch.allclose(scaler.inverse(scaler(x)), x, rtol=1e-5, atol=1e-2)
    assert set(scaler.state_dict()) == {"shift", "scale"}
    twin = AffineScaler.identity((4,))
    twin.load_state_dict(scaler.state_dict())
    assert torch.equal(twin(x), scaler(x)) and not twin.is_identity
    ident = AffineScaler.identity((4,))
    assert ident(x) is x and ident.inverse(x) is x and ident.spec() == {"method": "none", "value_range": None}
    with pytest.raises(ValueError, match="finite and > 0"):
        AffineScaler(torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="at least 2 training rows"):
        fit_scaler(x[:1], "features")
    with pytest.raises(ValueError, match="low < high"):
        fit_scaler(x, "range", value_range=[3, 3])


def _decoder(d: int, big_d: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(), torch.nn.Linear(16, big_d)).double()


def _reference_half_log_det(decode, z: torch.Tensor) -> torch.Tensor:
    """½ log det(JᵀJ) of ``decode`` at each row of ``z``, from the full Jacobian (float64)."""
    out = []
    for row in z:
        jac = torch.autograd.functional.jacobian(lambda v: decode(v[None])[0], row)  # (D, d)
        out.append(0.5 * torch.logdet(jac.T @ jac))
    return torch.stack(out)


@pytest.mark.parametrize("d, big_d", [(2, 5), (1, 3), (3, 3)])
def test_user_unit_density_is_the_exact_change_of_variables(d, big_d):
    decode = _decoder(d, big_d)
    g = torch.Generator().manual_seed(1)
    # scales from ~0.02 to ~50, exactly representable in the scaler's float32 buffers (then made float64)
    sigma = torch.exp(torch.randn(big_d, generator=g, dtype=torch.float64) * 2).float().double()
    scaler = AffineScaler(torch.randn(big_d, generator=g, dtype=torch.float64) * 100, sigma, method="features").double()
    assert scaler.scale.dtype == torch.float64 and torch.equal(scaler.scale, sigma)
    encode_u, decode_u = scaled_maps(lambda x: x[:, :d], decode, scaler)
    z = torch.randn(6, d, generator=g, dtype=torch.float64)
    reference = _reference_half_log_det(decode_u, z)  # the user-unit decoder's volume, full Jacobian
    got = decoder_log_volume(decode_u, z)
    torch.testing.assert_close(got, reference, rtol=1e-9, atol=1e-9)
    # The closed form ½ log det(Gᵀ diag(σ)² G) of the module docstring:
    jac = torch.stack([torch.autograd.functional.jacobian(lambda v: decode(v[None])[0], row) for row in z])
    closed = 0.5 * torch.logdet(jac.transpose(1, 2) @ torch.diag(sigma**2) @ jac)
    torch.testing.assert_close(closed, reference, rtol=1e-9, atol=1e-9)
    naive = decoder_log_volume(decode, z) + sigma.log().sum()  # model-unit volume + Σ log σ
    if d == big_d:  # a bijection: the naive term is exact, and it is -log_abs_det()
        torch.testing.assert_close(naive, reference, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got - decoder_log_volume(decode, z), -scaler.log_abs_det().expand(6))
    else:  # on a manifold it is not: the correction depends on the manifold's orientation
        assert (naive - reference).abs().min() > 1e-2
    assert torch.allclose(encode_u(decode_u(z)), scaler(decode_u(z))[:, :d])


def test_auto_means_features_for_own_tables_and_range_for_images():
    table, images = _table().float(), torch.rand(5, 1, 2, 2) * 16
    assert resolve_standardize("auto", kind="tabular", train=table) == ("features", None, None)
    assert resolve_standardize("auto", kind="tabular", train=table, own_data=False) == ("none", None, None)
    assert resolve_standardize("auto", kind="image", train=images / 16) == ("none", None, None)  # already in [0, 1]
    method, value_range, note = resolve_standardize("auto", kind="image", train=images)
    assert method == "range" and value_range == [float(images.min()), float(images.max())] and "declare data.value_range" in note
    assert resolve_standardize("auto", kind="image", train=images, value_range=[0, 16]) == ("range", [0.0, 16.0], None)
    assert resolve_standardize("global", kind="tabular", train=table) == ("global", None, None)
    assert resolve_standardize("none", kind="tabular", train=table) == ("none", None, None)
    with pytest.raises(ValueError, match="data.value_range is for range scaling, but data.standardize is 'features'"):
        resolve_standardize("features", kind="tabular", train=table, value_range=[0, 1])
    with pytest.raises(ValueError, match="data.standardize: expected one of"):
        resolve_standardize("zscore", kind="tabular", train=table)


def test_the_warning_names_the_columns_far_from_standardised():
    x = _table().float()
    message = scale_warning(x, kind="tabular", columns=["a", "b", "c", "area"])
    named = message.split(": columns ")[1].split("; ")[0]
    assert message.startswith("data.train is far from standardised: columns b (mean -") and "data.standardize=features" in message
    assert [part.split(" (")[0] for part in named.split("), ")] == ["b", "area"] and "area (mean 1.0" in named
    assert scale_warning(fit_scaler(x, "features")(x), kind="tabular") is None
    assert "values in [0, 16]" in scale_warning(torch.tensor([[0.0, 16.0], [1.0, 2.0]]), kind="image")
    assert scale_warning(torch.rand(4, 3), kind="image") is None


def _scaled_flow(d: int = 2, big_d: int = 4):
    from injflow.model import InjectiveFlow

    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Linear(big_d, 16), torch.nn.Tanh(), torch.nn.Linear(16, d))
    dec = torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(), torch.nn.Linear(16, big_d))
    flow = InjectiveFlow(enc, dec, latent_dim=d, data_shape=(big_d,)).double()
    x = _table()[:, :big_d]
    flow.set_scaler(fit_scaler(x, "features").double(), columns=["a", "b", "c", "area"][:big_d])
    return flow, x


def test_the_model_answers_in_user_units_and_trains_in_model_units():
    flow, x = _scaled_flow()
    s = flow.scaler
    z = flow.encode(x)
    torch.testing.assert_close(z, flow.encoder(s(x)))
    torch.testing.assert_close(flow.decode(z), s.inverse(flow.decoder(z)))
    torch.testing.assert_close(flow.reconstruct(x), s.inverse(flow.decoder(flow.encoder(s(x)))))
    view = flow.given(None)  # what methods and estimators see: the nets on scaled data
    torch.testing.assert_close(view.encode(s(x)), z)
    torch.testing.assert_close(view.decode(z), flow.decoder(z))
    samples = flow.sample(500, seed=0)
    assert float(samples[:, 3].mean()) > 5e3  # the area column in its own units (training mean 1e4)
    torch.testing.assert_close(flow.in_model_units().sample(500, seed=0), s(samples))
    # log_prob in user units = the exact change of variables through s⁻¹ ∘ g, from full float64 Jacobians
    log_p, recon = flow.log_prob(x[:5], return_reconstruction=True)
    zs = flow.encode(x[:5])
    reference = flow.latent.log_prob(zs) - _reference_half_log_det(flow.decode, zs)
    torch.testing.assert_close(log_p, reference, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(recon, (flow.decode(zs) - x[:5]).pow(2).sum(1))
    model_units = flow.in_model_units().log_prob(s(x[:5]))
    assert (log_p - model_units).abs().min() > 1e-3  # the unit change is not dropped...
    jac = torch.stack([torch.autograd.functional.jacobian(lambda v: flow.decoder(v[None])[0], row) for row in zs])
    closed = 0.5 * torch.logdet(jac.transpose(1, 2) @ torch.diag(s.scale**2) @ jac) - 0.5 * torch.logdet(jac.transpose(1, 2) @ jac)
    torch.testing.assert_close(model_units - log_p, closed, rtol=1e-9, atol=1e-9)  # ...nor taken as Σ log σ


def test_the_scaler_and_columns_are_saved_with_the_model(tmp_path):
    from injflow.model import InjectiveFlow

    flow, x = _scaled_flow()
    flow = flow.float()
    path = flow.save(tmp_path / "model.pt")
    loaded = InjectiveFlow.load(path, encoder=_scaled_flow()[0].encoder.float(), decoder=_scaled_flow()[0].decoder.float())
    assert loaded.columns == ["a", "b", "c", "area"] and loaded.scaler.method == "features" and loaded.scaled
    torch.testing.assert_close(loaded.scaler.shift, flow.scaler.shift)
    torch.testing.assert_close(loaded.encode(x.float()), flow.encode(x.float()))
    unscaled = InjectiveFlow(torch.nn.Linear(4, 2), torch.nn.Linear(2, 4), latent_dim=2, data_shape=(4,))
    assert not unscaled.scaled and unscaled.given(None) is unscaled and unscaled.in_model_units() is unscaled


def test_fit_data_scaler_decides_per_data_set_and_says_why():
    from injflow.data import DataSplits

    images = torch.rand(20, 1, 2, 2) * 16
    scaler, note = fit_data_scaler(DataSplits("image_folder", "image", images, images[:2], images[:2]))
    assert scaler.method == "range" and "declare data.value_range" in note
    assert torch.allclose(scaler(images).amin(), torch.tensor(0.0)) and torch.allclose(scaler(images).amax(), torch.tensor(1.0))
    table = _table().float()
    library = DataSplits("breast_cancer", "tabular", table, table[:2], table[:2])  # not own data: left as the papers have it
    scaler, note = fit_data_scaler(library)
    assert scaler.is_identity and note is None
    scaler, note = fit_data_scaler(library, "none")  # chosen explicitly: then the warning names the columns
    assert scaler.is_identity and "far from standardised" in note
    own = DataSplits("array", "tabular", table, table[:2] * 0, table[:2] * 0)
    scaler, note = fit_data_scaler(own)
    torch.testing.assert_close(scaler.shift, table.double().mean(0).float())  # the training split only
    scaled = scale_splits(own, scaler)
    torch.testing.assert_close(scaled.val, scaler(own.val))
    torch.testing.assert_close(scaled.train, scaler(table))
    assert scale_splits(library, AffineScaler.identity((4,))) is library
