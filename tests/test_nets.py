r"""Tests for injflow.nets: shapes, option validation, parameter counts of the papers' nets, and
every net inside the FIF estimator (BatchNorm in training mode included)."""

import pytest
import torch

from injflow.nets import (
    architecture_options,
    available_architectures,
    build_autoencoder,
    count_parameters,
)

# (architecture, data_shape, latent_dim, options): small-but-real configurations of the dense nets.
DENSE_CASES = [
    ("mlp", (2,), 1, {}),
    ("mlp", (1, 8, 8), 4, {"hidden_features": (32,)}),
    ("toy_resnet", (2,), 1, {}),
    ("toy_resnet", (3,), 2, {"n_blocks": 2, "hidden_features": 64, "activation": "relu"}),
    ("tabular", (6,), 3, {}),
    ("tabular", (43,), 21, {"activation": "silu"}),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


MNIST, CIFAR, CELEBA = (1, 28, 28), (3, 32, 32), (3, 64, 64)

# The papers' image nets: (architecture, data_shape, latent_dim, exact count measured here,
# paper's count, decimals the paper states it to in millions). The latent sizes are the ones that
# reproduce the paper's tables (Pythae benchmark: d = 16 / 256 / 64; FIF-ConvNet CelebA: d = 64
# as in App. E.3; FIF-ConvNet MNIST: any d in 7..14 gives 3.3M, we state d = 10). Kumar et al.
# give no counts (None): we record ours with the paper's d = 32 / 128 / 128.
PAPER_NETS = [
    ("pythae_convnet", MNIST, 16, 17_215_633, 17.2, 1),
    ("pythae_convnet", CIFAR, 256, 39_413_891, 39.4, 1),
    ("pythae_convnet", CELEBA, 64, 33_545_923, 33.5, 1),
    ("pythae_resnet", MNIST, 16, 733_905, 0.73, 2),
    ("pythae_resnet", CIFAR, 256, 4_783_363, 4.8, 1),
    ("pythae_resnet", CELEBA, 64, 1_623_491, 1.6, 1),
    ("fif_convnet", MNIST, 10, 3_294_843, 3.3, 1),
    ("fif_convnet", CELEBA, 64, 34_336_963, 34.3, 1),
    ("kumar_conv", MNIST, 32, 12_482_337, None, None),
    ("kumar_conv", CIFAR, 128, 53_794_435, None, None),
    ("kumar_conv", CELEBA, 128, 93_177_859, None, None),
]


def _ids(cases):
    return [f"{c[0]}-{'x'.join(map(str, c[1]))}-d{c[2]}" for c in cases]


def test_available_architectures():
    names = available_architectures()
    for name in ["mlp", "toy_resnet", "tabular", "kumar_conv", "pythae_convnet", "pythae_resnet", "fif_convnet"]:
        assert name in names
    assert names == sorted(names)


@pytest.mark.parametrize("arch, shape, d, options", DENSE_CASES)
def test_dense_round_trip(arch, shape, d, options):
    f, g = build_autoencoder(arch, data_shape=shape, latent_dim=d, **options)
    x = torch.randn(5, *shape)
    z = f(x)
    assert z.shape == (5, d)
    assert g(z).shape == x.shape
    assert f.training and g.training


def test_toy_resnet_matches_paper():
    # FIF App. E.1.1: four residual blocks, each one hidden layer of width 256, 1-D latent, 2-D data.
    f, g = build_autoencoder("toy_resnet", data_shape=(2,), latent_dim=1)
    blocks = [m for m in f.modules() if type(m).__name__ == "ResBlock"]
    assert len(blocks) == 4
    for block in blocks:
        linears = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(2, 256), (256, 2)]
    # encoder: 4 x (2*256+256 + 256*2+2) + Linear(2, 1); decoder mirrors it
    assert count_parameters(f) == 4 * 1282 + 3
    assert count_parameters(g) == 4 * 1282 + 4


def test_tabular_matches_paper():
    # FIF App. E.2: MLP D->256->256->d (ReLU, no norm) + 2 latent blocks with two hidden layers of 256.
    D, d = 8, 3  # POWER-like sizes (latent 3, table 5)
    f, g = build_autoencoder("tabular", data_shape=(D,), latent_dim=d)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in f.modules())
    assert all(not isinstance(m, torch.nn.SiLU) for m in f.modules())
    mlp = (D * 256 + 256) + (256 * 256 + 256) + (256 * d + d)
    block = (d * 256 + 256) + (256 * 256 + 256) + (256 * d + d)
    assert count_parameters(f) == mlp + 2 * block
    # the decoder is the mirror image with separate parameters
    assert count_parameters(g) == (d * 256 + 256) + (256 * 256 + 256) + (256 * D + D) + 2 * block
    assert not set(map(id, f.parameters())) & set(map(id, g.parameters()))


def test_unknown_architecture():
    with pytest.raises(ValueError, match="choose from:.*mlp"):
        build_autoencoder("nope", data_shape=(2,), latent_dim=1)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="'widht'"):
        build_autoencoder("mlp", data_shape=(4,), latent_dim=1, widht=3)


@pytest.mark.parametrize("arch", ["mlp", "toy_resnet", "tabular"])
def test_latent_not_smaller_than_data(arch):
    with pytest.raises(ValueError, match="latent_dim"):
        build_autoencoder(arch, data_shape=(2,), latent_dim=2)
    with pytest.raises(ValueError, match="latent_dim"):
        build_autoencoder(arch, data_shape=(2,), latent_dim=0)


def test_bad_option_values():
    with pytest.raises(ValueError, match="activation"):
        build_autoencoder("mlp", data_shape=(4,), latent_dim=1, activation="swish!")
    with pytest.raises(ValueError, match="hidden_features"):
        build_autoencoder("mlp", data_shape=(4,), latent_dim=1, hidden_features=(0,))
    with pytest.raises(ValueError, match="n_blocks"):
        build_autoencoder("toy_resnet", data_shape=(4,), latent_dim=1, n_blocks=-1)
    with pytest.raises(ValueError, match="data_shape"):
        build_autoencoder("mlp", data_shape=(4, 0), latent_dim=1)


def test_shape_and_latent_types():
    np = pytest.importorskip("numpy")
    f, g = build_autoencoder("mlp", data_shape=torch.Size([3]), latent_dim=np.int64(2))
    assert f(torch.zeros(2, 3)).shape == (2, 2)
    with pytest.raises(ValueError, match="latent_dim must be a positive int, got 1.5"):
        build_autoencoder("mlp", data_shape=(3,), latent_dim=1.5)
    with pytest.raises(ValueError, match="data_shape"):
        build_autoencoder("mlp", data_shape=5, latent_dim=1)


def test_architecture_options():
    assert architecture_options("tabular") == {
        "hidden_features": (256, 256),
        "n_blocks": 2,
        "block_hidden_features": (256, 256),
        "activation": "relu",
    }


def _check_fif(f, g, x):
    from injflow.estimators import fif_loss

    out = fif_loss(x, f, g, beta=10.0)
    B = x.shape[0]
    for key in ("loss", "nll", "reconstruction"):
        assert out[key].shape == (B,), key
        assert torch.isfinite(out[key]).all(), key
    out["loss"].mean().backward()
    params = list(f.parameters()) + list(g.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert any(p.grad.abs().sum() > 0 for p in f.parameters())
    assert any(p.grad.abs().sum() > 0 for p in g.parameters())


@pytest.mark.parametrize("arch, shape, d, options", DENSE_CASES)
def test_dense_in_fif_estimator(arch, shape, d, options):
    f, g = build_autoencoder(arch, data_shape=shape, latent_dim=d, **options)
    _check_fif(f, g, torch.randn(4, *shape))


@pytest.mark.parametrize("arch, shape, d, exact, paper, decimals", PAPER_NETS, ids=_ids(PAPER_NETS))
def test_paper_parameter_counts(arch, shape, d, exact, paper, decimals):
    f, g = build_autoencoder(arch, data_shape=shape, latent_dim=d)
    n = count_parameters(f, g)
    assert n == exact
    if paper is not None:
        # equal to the paper's table at the precision it is stated to
        assert round(n / 1e6, decimals) == paper


def test_fif_convnet_mnist_latent_range():
    # Table 11's 3.3M pins the unstated MNIST latent size to 7 <= d <= 14.
    def millions(d):
        f, g = build_autoencoder("fif_convnet", data_shape=MNIST, latent_dim=d)
        return round(count_parameters(f, g) / 1e6, 1)

    assert [millions(d) for d in (6, 7, 14, 15)] == [3.2, 3.3, 3.3, 3.4]


@pytest.mark.parametrize("arch, shape, d, exact, paper, decimals", PAPER_NETS, ids=_ids(PAPER_NETS))
def test_image_nets_in_fif_estimator(arch, shape, d, exact, paper, decimals):
    # Tiny batch, BatchNorm in training mode: shapes round-trip and all gradients are finite.
    f, g = build_autoencoder(arch, data_shape=shape, latent_dim=d)
    assert f.training and g.training
    x = torch.rand(2, *shape)
    z = f(x)
    assert z.shape == (2, d)
    assert g(z).shape == x.shape
    _check_fif(f, g, x)


@pytest.mark.parametrize("arch", ["kumar_conv", "pythae_convnet", "pythae_resnet", "fif_convnet"])
def test_unsupported_image_shape(arch):
    with pytest.raises(ValueError, match=r"supported data shapes: \(1, 28, 28\)"):
        build_autoencoder(arch, data_shape=(3, 28, 28), latent_dim=8)
    with pytest.raises(ValueError, match="latent_dim"):
        build_autoencoder(arch, data_shape=MNIST, latent_dim=784)


def test_fif_convnet_cifar_not_in_table():
    with pytest.raises(ValueError, match="supported data shapes"):
        build_autoencoder("fif_convnet", data_shape=CIFAR, latent_dim=64)


def test_paper_nets_take_no_options():
    with pytest.raises(ValueError, match="'width'.*it accepts: \\(none\\)"):
        build_autoencoder("pythae_convnet", data_shape=MNIST, latent_dim=16, width=3)


def test_fif_convnet_options():
    # App. E.1.2: conditional MNIST uses four times as many channels.
    f, g = build_autoencoder("fif_convnet", data_shape=MNIST, latent_dim=10, channel_factor=128)
    assert f[0][0].out_channels == 128
    f, g = build_autoencoder("fif_convnet", data_shape=MNIST, latent_dim=10, batch_norm=False, n_blocks=1)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in [*f.modules(), *g.modules()])
    with pytest.raises(ValueError, match="channel_factor"):
        build_autoencoder("fif_convnet", data_shape=MNIST, latent_dim=10, channel_factor=0)


def _types(module):
    return [type(m).__name__ for m in module.modules() if not list(m.children())]


def test_pythae_quirks():
    # Table 9: the MNIST decoder's "Conv(1, 3, 2)" is a transposed convolution 14 -> 28.
    f, g = build_autoencoder("pythae_convnet", data_shape=MNIST, latent_dim=16)
    last = [m for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))][-1]
    assert isinstance(last, torch.nn.ConvTranspose2d) and last.out_channels == 1
    # Table 10: no activation between the ResNet encoder's strided convolutions.
    f, g = build_autoencoder("pythae_resnet", data_shape=CELEBA, latent_dim=64)
    assert _types(f)[:4] == ["Conv2d"] * 4
    assert "BatchNorm2d" not in _types(f) + _types(g)
    # Table 10, CelebA: seven decoder layers ("Layer 6" twice) with a Sigmoid mid-decoder.
    types = _types(g)
    assert types.count("Sigmoid") == 2 and types[-1] == "Sigmoid"
    assert types.count("ConvTranspose2d") == 4


def test_kumar_uses_elu_and_batchnorm():
    f, g = build_autoencoder("kumar_conv", data_shape=CIFAR, latent_dim=128)
    types = _types(f) + _types(g)
    assert types.count("ELU") == 5 + 6 and "ReLU" not in types
    assert types.count("BatchNorm2d") == 5 + 4


# The nets' docstring examples run under pytest --doctest-modules (pyproject.toml), not here: running them twice in
# one process registered their example architecture twice.
