"""Variance heads (injflow.nets.variance): one encoder trunk, two linear heads, as the Pythae benchmark's VAE encoders.

The parameter counts are those of Pythae 0.1.2's ``VAE`` with ``Encoder_{Conv,ResNet}_VAE_{MNIST,CIFAR,CELEBA}`` and
``Decoder_{Conv,ResNet}_AE_*`` at the benchmark's latent sizes; each is the autoencoder's count (the FIF paper's
tables 9 and 10, docs/architectures.md) plus one ``log_var = nn.Linear(h, d)`` on the h flattened features that the
``embedding`` layer reads: (h + 1)·d parameters.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from injflow.methods import VAE, BetaVAE
from injflow.nets import GaussianEncoder, available_architectures, build_autoencoder, count_parameters
from injflow.nets.variance import latent_projection, layer_chain

MNIST, CIFAR, CELEBA = (1, 28, 28), (3, 32, 32), (3, 64, 64)


@pytest.mark.parametrize(
    "arch,shape,d,pythae",
    [
        # ConvNet MNIST: AE 17,215,633 + log_var Linear(1024 -> 16): 1025 * 16 = 16,400 -> 17,232,033.
        ("pythae_convnet", MNIST, 16, 17_232_033),
        # ConvNet CIFAR-10: AE 39,413,891 + Linear(1024*2*2 = 4096 -> 256): 4097 * 256 = 1,048,832 -> 40,462,723.
        ("pythae_convnet", CIFAR, 256, 40_462_723),
        # ConvNet CelebA: AE 33,545,923 + Linear(1024*4*4 = 16384 -> 64): 16385 * 64 = 1,048,640 -> 34,594,563.
        ("pythae_convnet", CELEBA, 64, 34_594_563),
        # ResNet MNIST: AE 733,905 + Linear(128*4*4 = 2048 -> 16): 2049 * 16 = 32,784 -> 766,689 (not the 1,129,073
        # of a second full encoder copy: 733,905 + 394,896 + a 16x16 head's 272).
        ("pythae_resnet", MNIST, 16, 766_689),
        # ResNet CIFAR-10: AE 4,783,363 + Linear(128*8*8 = 8192 -> 256): 8193 * 256 = 2,097,408 -> 6,880,771.
        ("pythae_resnet", CIFAR, 256, 6_880_771),
        # ResNet CelebA: AE 1,623,491 + Linear(128*4*4 = 2048 -> 64): 2049 * 64 = 131,136 -> 1,754,627.
        ("pythae_resnet", CELEBA, 64, 1_754_627),
    ],
)
def test_vae_parameter_counts_equal_pythae(arch, shape, d, pythae):
    """Built on the meta device (shapes only), so the 40M-parameter nets cost no memory or time."""
    with torch.device("meta"):
        f, g = build_autoencoder(arch, data_shape=shape, latent_dim=d)
        q = GaussianEncoder.around(f, d)
    assert count_parameters(q, g) == pythae
    assert isinstance(layer_chain(f)[q.split], nn.Linear) and q.split == len(layer_chain(f)) - 1  # parallel to the last


# Every architecture injflow has, small enough to run in a fraction of a second: (data shape, d, options, whether the
# head is parallel to a latent projection (True) or reads the mean (False, the injective flows' encoders)).
SMALL = {
    "mlp": ((6,), 2, {"hidden_features": (16, 8)}, True),
    "toy_resnet": ((2,), 1, {"n_blocks": 2, "hidden_features": 16}, True),
    "tabular": ((6,), 3, {"hidden_features": (16, 16), "block_hidden_features": (8, 8)}, True),
    "kumar_conv": (MNIST, 8, {}, True),
    "pythae_convnet": (MNIST, 16, {}, True),
    "pythae_resnet": (MNIST, 16, {}, True),
    "fif_convnet": (MNIST, 10, {"channel_factor": 4, "block_width": 16, "n_blocks": 2}, True),
    "injective_coupling": ((6,), 2, {"outer_layers": 2, "outer_hidden_features": (8,), "inner_layers": 2,
                                     "inner_hidden_features": (8,)}, False),
    "trumpet": ((8,), 2, {"stage_layers": 1, "hidden_features": (8,), "inner_layers": 1,
                          "inner_hidden_features": (8,)}, False),
}


def test_every_architecture_is_covered():
    assert {a for a in available_architectures() if not a.startswith("doc_")} <= set(SMALL)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_every_architecture_gets_one_trunk_and_two_heads(arch):
    """For each architecture: the mean is the plain encoder's output (bit for bit), the head reads exactly the
    features the encoder's latent projection reads in its own forward (captured by a hook, an independent reference),
    it adds (h + 1)·d parameters, and the trunk runs once per posterior."""
    shape, d, options, parallel = SMALL[arch]
    torch.manual_seed(0)
    f, g = build_autoencoder(arch, data_shape=shape, latent_dim=d, **options)
    f, g = f.double().eval(), g.double()
    n_encoder = count_parameters(f)
    q = GaussianEncoder.around(f, d)
    x = torch.rand(3, *shape, dtype=torch.float64)
    assert q.log_variance_head.weight.dtype == torch.float64
    if parallel:
        projection = layer_chain(f)[latent_projection(f, d)]
        seen = []
        handle = projection.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        plain = f(x)  # the plain encoder's own forward: what the projection reads
        handle.remove()
        features, h = seen[0], projection.in_features
    else:
        assert q.split is None
        plain = features = f(x)
        h = d
    assert count_parameters(q) == n_encoder + (h + 1) * d
    calls = []
    first = next(m for m in f.modules() if len(list(m.parameters(recurse=False))))
    first.register_forward_hook(lambda *a: calls.append(1))
    mean, log_var = q.posterior(x)
    assert len(calls) == 1  # one trunk pass for both heads
    assert torch.equal(mean, plain) and torch.equal(q(x), plain)
    head = q.log_variance_head
    assert torch.allclose(log_var, features @ head.weight.T + head.bias, atol=1e-12)
    assert mean.shape == log_var.shape == (3, d)


def test_the_kl_trains_the_shared_trunk():
    """The KL's gradient reaches the head and, through the shared features, the trunk below the projection."""
    from injflow.methods.vae import gaussian_kl

    torch.manual_seed(0)
    f, _ = build_autoencoder("mlp", data_shape=(6,), latent_dim=2, hidden_features=(16,))
    q = GaussianEncoder.around(f, 2)
    _, log_var = q.posterior(torch.randn(4, 6))
    first = layer_chain(f)[0]
    grads = torch.autograd.grad(gaussian_kl(torch.zeros_like(log_var), log_var).sum(),
                                [q.log_variance_head.weight, first.weight, layer_chain(f)[q.split].weight],
                                allow_unused=True)
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    assert grads[2] is None  # the mean's projection is not on the log-variance's path


@pytest.mark.parametrize("method", [VAE, BetaVAE])
def test_a_conditional_model_is_refused_in_one_line(method):
    from injflow.model import InjectiveFlow
    from injflow.nets.conditional import build_conditional_autoencoder

    f, g = build_conditional_autoencoder("mlp", data_shape=(3,), latent_dim=1, num_classes=2, hidden_features=(8,))
    flow = InjectiveFlow(f, g, latent_dim=1, num_classes=2)
    with pytest.raises(ValueError, match="model.conditional=false"):
        method().prepare(flow)
