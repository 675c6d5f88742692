"""Invertible-block libraries for injflow.nets.invertible: zuko against FrEIA, correctness and speed.

For each library, 10 affine coupling layers with 4 × 128 conditioners (Caterini et al.'s D-dimensional RNF flow):

* float64: inverse error, log|det| against ``slogdet`` of the full Jacobian, forward-mode JVP against reverse mode;
* float32: one forward + backward per direction as injective flows use them (data → latent with log-det, latent →
  data without, latent → data with log-det), median of interleaved rounds after warm-up steps, one process.

Usage:
    python benchmarks/flow_libraries.py --threads 1 --rounds 20 --features 43 --batch 512

FrEIA is not an injflow dependency: install it to compare (``pip install FrEIA``); without it only zuko is timed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

LAYERS, HIDDEN = 10, (128, 128, 128, 128)


def zuko_flow(features: int):
    from injflow.nets.invertible import Bijection

    phi = Bijection(features, LAYERS, HIDDEN)
    return phi, {
        "data -> latent + log-det": phi.forward_and_log_det,
        "latent -> data (no log-det)": lambda y: (phi.inverse(y), y.new_zeros(y.shape[0])),
        "latent -> data + log-det": lambda y: phi.transform().inv.call_and_ladj(y),
    }


def freia_flow(features: int):
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    def subnet(n_in: int, n_out: int) -> nn.Module:
        layers, width = [], n_in
        for h in HIDDEN:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        return nn.Sequential(*layers, nn.Linear(width, n_out))

    inn = Ff.SequenceINN(features)
    for _ in range(LAYERS):
        inn.append(Fm.AllInOneBlock, subnet_constructor=subnet, permute_soft=False)
    return inn, {
        "data -> latent + log-det": lambda x: inn(x, jac=True),
        "latent -> data (no log-det)": lambda y: (inn(y, rev=True, jac=False)[0], y.new_zeros(y.shape[0])),
        "latent -> data + log-det": lambda y: inn(y, rev=True, jac=True),
    }


def check(module: nn.Module, fns: dict, features: int) -> dict[str, float]:
    module.double()
    x = torch.randn(4, features, dtype=torch.float64)
    forward, inverse = fns["data -> latent + log-det"], fns["latent -> data (no log-det)"]
    y, log_det = forward(x)
    full = torch.autograd.functional.jacobian(lambda v: forward(v[None])[0][0], x[0])
    t = torch.randn_like(y)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(inverse(fwAD.make_dual(y.detach(), t))[0]).tangent
    reverse = torch.autograd.functional.jvp(lambda v: inverse(v)[0], y.detach(), t)[1]
    out = {"inverse": (inverse(y)[0] - x).abs().max().item(),
           "log_det": abs(torch.linalg.slogdet(full)[1] - log_det[0]).item(),
           "forward_mode_jvp": (tangent - reverse).abs().max().item()}
    module.float()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--features", type=int, default=43)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    libraries = {"zuko": zuko_flow}
    try:
        import FrEIA  # noqa: F401

        libraries["FrEIA"] = freia_flow
    except ImportError:
        print("FrEIA not installed: timing zuko only")
    built = {}
    for name, make in libraries.items():
        torch.manual_seed(0)
        module, fns = make(args.features)
        print(f"{name}: {sum(p.numel() for p in module.parameters())} parameters; float64 errors {check(module, fns, args.features)}")
        built[name] = (module, fns)
    x = torch.randn(args.batch, args.features)
    times = {(lib, d): [] for lib, (_, fns) in built.items() for d in fns}
    for r in range(args.warmup + args.rounds):
        for lib, (module, fns) in built.items():
            for direction, fn in fns.items():
                module.zero_grad(set_to_none=True)
                start = time.perf_counter()
                out, log_det = fn(x)
                (out.square().sum() + log_det.sum()).backward()
                if r >= args.warmup:
                    times[(lib, direction)].append(time.perf_counter() - start)
    print(f"D={args.features}, batch {args.batch}, {args.threads} thread(s), {args.rounds} interleaved rounds after {args.warmup} warm-ups")
    for (lib, direction), ts in times.items():
        q = statistics.quantiles(ts, n=4)
        print(f"  {lib:6s} {direction:28s} median {1e3 * statistics.median(ts):7.1f} ms (IQR {1e3 * q[0]:.1f}-{1e3 * q[2]:.1f})")


if __name__ == "__main__":
    main()
