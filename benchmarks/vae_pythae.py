"""injflow's VAE against Pythae 0.1.2's on the Pythae benchmark ResNet (MNIST, d = 16), and against injflow's old VAE.

Three variants train the same architecture on the same MNIST batches, one Adam step per call:

* ``injflow``: the ``vae`` method (σ = 1) on ``pythae_resnet``: one encoder trunk, two linear heads
  (:class:`injflow.nets.GaussianEncoder`), one decoder pass per step;
* ``injflow_before``: the VAE as injflow built it up to commit af05574 (reproduced below): the log-variance from a
  second, re-initialised copy of the whole encoder plus a zero-initialised d×d layer, and one extra decoder pass at
  the mean (without gradient) per step, only to log the reconstruction;
* ``pythae``: ``pythae.models.VAE`` with ``Encoder_ResNet_VAE_MNIST`` / ``Decoder_ResNet_AE_MNIST``
  (``reconstruction_loss="mse"``), if Pythae is installed.

Reported: parameter counts; the median time per training step over interleaved rounds (benchmarks/harness.py) and
the paired ratios; and a trajectory check: Pythae's VAE started from injflow's initial weights (copied layer by
layer) and trained on the same batches with the same reparametrisation noise, its loss minus injflow's at every
step (injflow's σ = 1 negative ELBO is Pythae's loss plus the constant D/2·log 2π) and the test reconstruction
error ‖g(μ(x)) − x‖² of both after training.

    .venv/bin/python benchmarks/vae_pythae.py --out docs/results/vae_pythae            # 1 thread
    .venv/bin/python benchmarks/vae_pythae.py --rounds 5 --steps 50 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared harness beside this script
from harness import load_average, machine, paired_ratio, report, time_interleaved  # noqa: E402

D_LATENT, BATCH, LR = 16, 100, 1e-4  # the Pythae benchmark's MNIST latent size, batch size and learning rate


class _OldGaussianEncoder(nn.Module):
    """injflow's VAE encoder up to af05574: mean = the encoder; log-variance = a re-initialised copy of the whole
    encoder followed by a zero-initialised d×d layer."""

    def __init__(self, encoder: nn.Module, d: int) -> None:
        super().__init__()
        body = copy.deepcopy(encoder)
        for m in body.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        head = nn.Linear(d, d)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.mean_net, self.log_variance_net = encoder, nn.Sequential(body, head)

    def forward(self, x):
        return self.mean_net(x)


def _old_vae_loss(x, encoder, decoder, latent_dim: int):
    """The old terms: the reparametrised sample's reconstruction for the loss, plus a decoder pass at the mean."""
    mean, log_var = encoder.mean_net(x), encoder.log_variance_net(x)
    z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
    sampled = (decoder(z) - x).flatten(1).pow(2).sum(1)
    kl = 0.5 * (log_var.exp() + mean.pow(2) - 1.0 - log_var).sum(1)
    with torch.no_grad():
        _ = (decoder(mean) - x).flatten(1).pow(2).sum(1)  # logged only
    return (0.5 * sampled + 0.5 * x[0].numel() * math.log(2 * math.pi) + kl).mean()


def _injflow_flow(seed: int):
    from injflow.config import config_from_dict
    from injflow.model import InjectiveFlow

    torch.manual_seed(seed)
    config = config_from_dict({"data": {"name": "mnist"}, "model": {"architecture": "pythae_resnet",
                               "latent_dim": D_LATENT}, "method": {"name": "vae", "sigma": 1.0}})
    return InjectiveFlow.from_config(config, data_shape=(1, 28, 28), data_kind="image", image_shape=(1, 28, 28))


def _pythae_model():
    from pythae.models import VAE, VAEConfig
    from pythae.models.nn.benchmarks.mnist import Decoder_ResNet_AE_MNIST, Encoder_ResNet_VAE_MNIST

    cfg = VAEConfig(input_dim=(1, 28, 28), latent_dim=D_LATENT, reconstruction_loss="mse")
    return VAE(cfg, encoder=Encoder_ResNet_VAE_MNIST(cfg), decoder=Decoder_ResNet_AE_MNIST(cfg))


def _copy_weights(flow, model) -> None:
    """injflow's parameters into Pythae's, in registration order (the same layers in the same order)."""
    ours = [*flow.encoder.parameters(), *flow.decoder.parameters()]
    theirs = [*model.encoder.parameters(), *model.decoder.parameters()]
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape, (a.shape, b.shape)
            b.copy_(a)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (one training step per variant each)")
    parser.add_argument("--steps", type=int, default=150, help="steps of the injflow vs Pythae trajectory check")
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    from injflow.data import load_dataset
    from injflow.methods import VAE

    data = load_dataset("mnist", n_val=1000, seed=args.seed)
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(data.train.shape[0], generator=g)
    batches = [data.train[order[i * BATCH:(i + 1) * BATCH]] for i in range(max(args.steps, args.rounds + 2))]
    test = data.test[: args.n_test]
    try:
        import pythae  # noqa: F401

        have_pythae = True
    except ImportError:
        have_pythae = False

    # ---- the three models, from one initialisation where the structure allows
    method = VAE(sigma=1.0)
    flow = _injflow_flow(args.seed)  # from_config prepares it: GaussianEncoder with the parallel head
    before = _injflow_flow(args.seed)
    method.finalize(before)  # the plain encoder, then the old wrapping
    before.encoder = _OldGaussianEncoder(before.encoder, D_LATENT)
    counts = {"injflow": _count(flow), "injflow_before": _count(before)}
    pythae_model = None
    if have_pythae:
        pythae_model = _pythae_model()
        counts["pythae"] = _count(pythae_model)
        _copy_weights(flow, pythae_model)

    # ---- time per training step, interleaved
    def stepper(name):
        params = {"injflow": flow, "injflow_before": before, "pythae": pythae_model}[name].parameters()
        opt = torch.optim.Adam(params, lr=LR)
        state = {"i": 0}

        def call():
            x = batches[state["i"] % len(batches)]
            state["i"] += 1
            opt.zero_grad(set_to_none=True)
            if name == "injflow":
                loss = method.loss(x, state["i"], flow)["loss"].mean()
            elif name == "injflow_before":
                loss = _old_vae_loss(x, before.encoder, before.decoder, D_LATENT)
            else:
                loss = pythae_model({"data": x}).loss
            loss.backward()
            opt.step()

        return call

    names = ["injflow", "injflow_before"] + (["pythae"] if have_pythae else [])
    # Timing trains copies, so the trajectory check below starts from the untouched initial weights.
    flow0, pythae0 = copy.deepcopy(flow), copy.deepcopy(pythae_model)
    timings = time_interleaved({n: stepper(n) for n in names}, rounds=args.rounds, warmup=2)
    flow, pythae_model = flow0, pythae0
    seconds = {n: t.median for n, t in timings.items()}
    ratios = {f"{n}/injflow": paired_ratio(timings[n], timings["injflow"]) for n in names if n != "injflow"}

    # ---- trajectory: the same weights, batches and noise in injflow and Pythae
    trajectory = None
    if have_pythae:
        opt_a = torch.optim.Adam(flow.parameters(), lr=LR)
        opt_b = torch.optim.Adam(pythae_model.parameters(), lr=LR)
        const = 0.5 * 784 * math.log(2 * math.pi)
        diffs, losses = [], []
        for step in range(args.steps):
            x = batches[step]
            torch.manual_seed(10_000 + step)
            opt_a.zero_grad(set_to_none=True)
            la = method.loss(x, step, flow)["loss"].mean() - const
            la.backward()
            opt_a.step()
            torch.manual_seed(10_000 + step)
            opt_b.zero_grad(set_to_none=True)
            lb = pythae_model({"data": x}).loss
            lb.backward()
            opt_b.step()
            diffs.append(abs(float(la) - float(lb)) / abs(float(lb)))
            losses.append((float(la), float(lb)))
        with torch.no_grad():
            flow.eval()
            pythae_model.eval()
            rec_a = float((flow.decode(flow.encode(test)) - test).flatten(1).pow(2).sum(1).mean())
            mu = pythae_model.encoder(test).embedding
            rec_b = float((pythae_model.decoder(mu)["reconstruction"] - test).flatten(1).pow(2).sum(1).mean())
        trajectory = {
            "steps": args.steps, "first_loss": losses[0], "last_loss": losses[-1],
            "max_relative_loss_difference": max(diffs), "test_reconstruction_injflow": rec_a,
            "test_reconstruction_pythae": rec_b, "test_points": int(test.shape[0]),
        }

    result = {
        "architecture": "pythae_resnet MNIST, d = 16", "batch": BATCH, "lr": LR, "threads": args.threads,
        "rounds": args.rounds, "parameters": counts, "seconds_per_step": seconds,
        "seconds_per_step_iqr": {n: t.iqr for n, t in timings.items()},
        "paired_ratios_median_q1_q3": ratios,
        "seconds_per_epoch_of_50k": {n: s * 50_000 / BATCH for n, s in seconds.items()},
        "trajectory": trajectory, "machine": machine("cpu", args.threads), "load_average": load_average(),
        "pythae": _version("pythae") if have_pythae else None, "wall_s": time.perf_counter() - start,
    }
    report(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
