"""The composite BatchNorm is a drop-in twin of torch's fused BatchNorm (first order, buffers, checkpoints).

Its higher-order correctness inside every estimator path is tested in tests/test_estimators.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from injflow.nets.normalization import BatchNorm1d, BatchNorm2d, use_composite_batchnorm


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("kind,shape", [("1d", (16, 5)), ("1d", (16, 5, 7)), ("2d", (8, 3, 4, 4))])
def test_composite_matches_fused_values_gradients_and_running_stats(kind, shape, momentum):
    fused = (nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d)(shape[1], momentum=momentum).double()
    with torch.no_grad():
        fused.weight.uniform_(0.5, 1.5)
        fused.bias.uniform_(-0.5, 0.5)
    composite = (BatchNorm1d if kind == "1d" else BatchNorm2d)(shape[1], momentum=momentum).double()
    composite.load_state_dict(fused.state_dict())
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        x = (torch.randn(shape, dtype=torch.float64, generator=generator) * 2 + step).requires_grad_(True)
        a, b = fused(x), composite(x)
        assert torch.allclose(a, b, atol=1e-12)
        cotangent = torch.randn_like(a)
        ga = torch.autograd.grad(a, [x, fused.weight, fused.bias], cotangent)
        gb = torch.autograd.grad(b, [x, composite.weight, composite.bias], cotangent)
        for u, v in zip(ga, gb):
            assert torch.allclose(u, v, atol=1e-10)
    for key, value in fused.state_dict().items():
        assert torch.allclose(composite.state_dict()[key].double(), value.double(), atol=1e-12), key
    fused.eval(), composite.eval()
    x = torch.randn(shape, dtype=torch.float64, generator=generator)
    assert torch.allclose(fused(x), composite(x), atol=1e-12)


def test_conversion_is_in_place_and_keeps_parameters_and_checkpoints():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.BatchNorm1d(3)))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    parameters = list(net.parameters())
    assert use_composite_batchnorm(net) is net
    assert isinstance(net[1], BatchNorm2d) and isinstance(net[2][2], BatchNorm1d)
    assert isinstance(net[1], nn.BatchNorm2d)  # still a torch BatchNorm for isinstance checks
    assert list(net.parameters()) == parameters
    assert net.state_dict().keys() == before.keys()
    net.load_state_dict(before)  # checkpoints of the fused version load unchanged
    assert net(torch.randn(5, 1, 6, 6)).shape == (5, 3)


def test_forward_mode_tangent_matches_finite_differences():
    """First-order forward mode through the composite layer (the layer-level check)."""
    bn = BatchNorm1d(4).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    t = torch.randn_like(x)
    import torch.autograd.forward_ad as fwAD

    from injflow.estimators import prepare_forward_ad

    prepare_forward_ad()  # torch's own first-use notice, silenced as injflow's jvp does
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(bn(fwAD.make_dual(x, t))).tangent
    h = 1e-6
    assert torch.allclose(tangent, (bn(x + h * t) - bn(x - h * t)) / (2 * h), atol=1e-7)
