"""Invertible-architecture injective flows (injflow.nets.invertible): exact left inverses, exact log-determinants.

Every check is in float64 against a reference that does not use the code under test: full Jacobians from
``torch.autograd.functional.jacobian`` and ``slogdet``/``svd``.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

import injflow.nets.invertible as inv
from injflow import estimators as E
from injflow.nets import build_autoencoder, count_parameters

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _double(*modules):
    for m in modules:
        m.to(DTYPE)


# (architecture, data_shape, latent_dim, options): small versions of every kind of block.
ARCHS = [
    ("injective_coupling", (6,), 2, {"outer_layers": 3, "outer_hidden_features": (16,), "inner_layers": 2, "inner_hidden_features": (8,)}),
    ("injective_coupling", (5,), 2, {"outer_layers": 2, "outer_hidden_features": (16,), "inner_layers": 2,
                                     "inner_hidden_features": (8,), "transform": "spline", "bins": 4, "bound": 3.0}),
    ("injective_coupling", (5,), 1, {"outer_layers": 2, "outer_hidden_features": (16,), "inner_layers": 2,
                                     "inner_hidden_features": (8,), "transform": "autoregressive"}),
    ("injective_coupling", (1, 3, 3), 3, {"outer_layers": 2, "outer_hidden_features": (16,), "inner_layers": 1, "inner_hidden_features": (8,)}),
    ("trumpet", (7,), 2, {"stage_layers": 1, "hidden_features": (16,), "inner_layers": 2, "inner_hidden_features": (8,)}),
    ("trumpet", (9,), 2, {"stage_layers": 2, "hidden_features": (16,), "inner_layers": 1, "inner_hidden_features": (8,),
                          "expansion": "pad", "transform": "spline"}),
]
IDS = [f"{a}-{'x'.join(map(str, s))}-d{d}-{o.get('transform', 'affine')}-{o.get('expansion', '')}" for a, s, d, o in ARCHS]


def _build(arch, shape, d, options):
    f, g = build_autoencoder(arch, data_shape=shape, latent_dim=d, **options)
    _double(f, g)
    return f, g


@pytest.mark.parametrize("arch, shape, d, options", ARCHS, ids=IDS)
def test_encoder_is_an_exact_left_inverse_on_the_manifold(arch, shape, d, options):
    f, g = _build(arch, shape, d, options)
    z = 1.5 * torch.randn(16, d, dtype=DTYPE)
    x_hat = g(z)
    assert x_hat.shape == (16, *shape)
    assert torch.allclose(f(x_hat), z, atol=1e-10, rtol=0)
    # Off the manifold f is a projection: g(f(x)) is on the manifold and projects to itself.
    x = torch.randn(16, *shape, dtype=DTYPE)
    assert (g(f(x)) - x).abs().max() > 1e-3  # a bottleneck cannot reconstruct arbitrary points
    assert torch.allclose(f(g(f(x))), f(x), atol=1e-9, rtol=0)


@pytest.mark.parametrize("transform, n", [("affine", 4), ("spline", 3), ("autoregressive", 4), ("affine", 1), ("spline", 1)])
def test_block_log_det_equals_full_jacobian(transform, n):
    phi = inv.Bijection(n, layers=3, hidden_features=(16,), transform=transform, bins=5, bound=3.0).to(DTYPE)
    x = 2 * torch.randn(6, n, dtype=DTYPE)  # reaches the spline's linear tails beyond ±3 too
    y, log_det = phi.forward_and_log_det(x)
    assert torch.allclose(phi(x), y, atol=1e-12)
    assert torch.allclose(phi.inverse(y), x, atol=1e-10)
    for i in range(x.shape[0]):
        full = jacobian(lambda v: phi(v[None])[0], x[i])
        assert torch.allclose(log_det[i], torch.linalg.slogdet(full)[1], atol=1e-10)
        # ... and the inverse's Jacobian is the inverse matrix (the decoder direction is the same map).
        back = jacobian(lambda v: phi.inverse(v[None])[0], y[i])
        assert torch.allclose(back @ full, torch.eye(n, dtype=DTYPE), atol=1e-9)


def test_padded_flow_pieces_and_decoder_volume():
    f, g = _build(*ARCHS[0])
    net = f.flow
    assert g.flow is net and isinstance(net, inv.PaddedFlow)
    x = torch.randn(5, 6, dtype=DTYPE)
    h, log_det = net.normalize(x)
    assert torch.allclose(h[:, :2], net.project(x), atol=1e-12)
    for i in range(5):
        assert torch.allclose(log_det[i], torch.linalg.slogdet(jacobian(lambda v: net.outer(v[None])[0], x[i]))[1], atol=1e-10)
    # lift = w ∘ pad: its Jacobian is the first d columns of w's Jacobian at pad(u) (the RNF volume term).
    u = torch.randn(5, 2, dtype=DTYPE)
    for i in range(5):
        lift_jac = jacobian(lambda v: net.lift(v[None])[0], u[i])
        w_jac = jacobian(lambda v: net.outer.inverse(v[None])[0], net.pad(u[i : i + 1])[0])
        assert torch.allclose(lift_jac, w_jac[:, :2], atol=1e-10)
    # Chain rule across the pieces: ½ log det(g'ᵀg') = ½ log det(J_liftᵀ J_lift) − log|det (h⁻¹)'(u)|.
    z = torch.randn(5, 2, dtype=DTYPE)
    u = net.inner.inverse(z)
    _, inner_log_det = net.inner.forward_and_log_det(u)
    want = torch.stack([
        0.5 * torch.linalg.slogdet(j.T @ j)[1]
        for j in (jacobian(lambda v: g(v[None])[0], z[i]) for i in range(5))
    ])
    assert torch.allclose(E.decoder_log_volume(g, z), want, atol=1e-9)
    assert torch.allclose(E.decoder_log_volume(net.lift, u) - inner_log_det, want, atol=1e-9)


@pytest.mark.parametrize("arch, shape, d, options", [ARCHS[0], ARCHS[4]], ids=[IDS[0], IDS[4]])
def test_forward_mode_jvp_of_decoder_matches_reverse_mode(arch, shape, d, options):
    # The FIF surrogate (mixed mode) and the exact log-det push tangents forward through the decoder.
    f, g = _build(arch, shape, d, options)
    z = torch.randn(3, d, dtype=DTYPE)
    for i in range(3):
        assert torch.allclose(E.decoder_jacobian(g, z[i : i + 1])[0], jacobian(lambda v: g(v[None])[0], z[i]), atol=1e-10)
    x = torch.randn(3, *shape, dtype=DTYPE)
    assert torch.allclose(E.encoder_jacobian(f, x)[1], jacobian(lambda v: f(v[None])[0], x[1]).reshape(d, -1), atol=1e-10)


def test_trumpet_widths_and_injective_layer():
    f, g = build_autoencoder("trumpet", data_shape=(50,), latent_dim=3, stage_layers=1, hidden_features=(8,),
                             inner_layers=1, inner_hidden_features=(4,))
    assert [s.widths for s in f.flow.stages] == [(3, 6), (6, 12), (12, 24), (24, 48), (48, 50)]
    layer = inv.InjectiveLinear(3, 7).to(DTYPE)
    with torch.no_grad():
        layer.weight.add_(0.3 * torch.randn(7, 3, dtype=DTYPE))  # no longer orthonormal: least squares matters
    x = torch.randn(4, 3, dtype=DTYPE)
    y = layer(x)
    assert torch.allclose(layer.inverse(y), x, atol=1e-12)
    off = y + torch.randn(4, 7, dtype=DTYPE)
    want = torch.linalg.lstsq(layer.weight, (off - layer.bias).T).solution.T
    assert torch.allclose(layer.inverse(off), want, atol=1e-10)


def test_encoder_and_decoder_share_one_set_of_parameters(tmp_path):
    f, g = build_autoencoder("injective_coupling", data_shape=(6,), latent_dim=2)
    assert {id(p) for p in f.parameters()} == {id(p) for p in g.parameters()}
    n = sum(p.numel() for p in f.parameters())
    assert count_parameters(f, g) == n
    # Caterini et al.'s tabular RNF sizes: RealNVP 10 × (4 × 128) on D, 5 × (2 × 32) on d.
    mlp = lambda i, o, hs: sum(a * b + b for a, b in zip((i, *hs), (*hs, o)))  # noqa: E731
    assert n == 10 * mlp(3, 2 * 3, (128,) * 4) + 5 * mlp(1, 2 * 1, (32, 32))
    # Saving and loading the shared net through the engine's model class keeps f ∘ g = id.
    from injflow.model import InjectiveFlow

    flow = InjectiveFlow(f, g, latent_dim=2, data_shape=(6,))
    flow.save(tmp_path / "m.pt")
    f2, g2 = build_autoencoder("injective_coupling", data_shape=(6,), latent_dim=2)
    loaded = InjectiveFlow.load(tmp_path / "m.pt", encoder=f2, decoder=g2)
    z = torch.randn(3, 2)
    assert torch.allclose(loaded.decode(z), g(z), atol=1e-6)
    assert loaded.encoder.flow is loaded.decoder.flow


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="transform must be one of"):
        build_autoencoder("injective_coupling", data_shape=(4,), latent_dim=2, transform="glow")
    with pytest.raises(ValueError, match="hidden_features"):
        build_autoencoder("injective_coupling", data_shape=(4,), latent_dim=2, outer_hidden_features=())
    with pytest.raises(ValueError, match="expansion"):
        build_autoencoder("trumpet", data_shape=(4,), latent_dim=2, expansion="conv")
    with pytest.raises(ValueError, match="latent_dim"):
        build_autoencoder("trumpet", data_shape=(4,), latent_dim=4)
    with pytest.raises(ValueError, match="architecture to 'injective_coupling'"):
        inv.injective_flow_of(object(), "rnf")

# The module's docstring examples run under pytest --doctest-modules (pyproject.toml).
