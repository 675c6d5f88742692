"""Step time (and, on CUDA, peak step memory) of every estimator relative to an autoencoder step.

One process, same nets and batch for every variant, warm-up steps, then the variants *interleaved*
(round r times every variant once) so that machine noise hits all of them alike; the table reports the
median step time and its ratio to the median reconstruction-only autoencoder step.

Usage:
    python benchmarks/step_time.py                       # CPU, 2 threads, both nets
    python benchmarks/step_time.py --device cuda --rounds 50
    python benchmarks/step_time.py --nets mlp --variants ae,fif-mixed-k1 --markdown out.md
    python benchmarks/step_time.py --compile --nets mlp   # torch.func + torch.compile FIF against compiled AE
    python benchmarks/step_time.py --threads 1 --variants ae,fif-mixed-k1,fif-mixed-k1@c779632 --baseline-rev c779632

A step is ``zero_grad; loss(x).backward(); Adam.step()`` in float32 with the nets in training mode.
"""

from __future__ import annotations

import os
import sys

if "--compile" in sys.argv:
    # Inductor's generated CPU kernels bring their own OpenMP runtime; with the default active wait its idle
    # threads spin and starve the other runtime's (eager ops slow down ~100x on 2 cores). Must precede torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("KMP_BLOCKTIME", "0")

import argparse
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from injflow import estimators as E
from injflow.nets import build_autoencoder, count_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared harness beside this script
from harness import load_average, machine, paired_ratio, time_interleaved  # noqa: E402

BETA = 10.0


@dataclass
class Bench:
    name: str
    description: str
    encoder: nn.Module
    decoder: nn.Module
    batch: Tensor


def make_benches(names: list[str], device: torch.device) -> list[Bench]:
    generator = torch.Generator().manual_seed(0)
    benches = []
    if "mlp" in names:
        # FIF App. E.2 tabular nets: 2×256 MLP + 2 latent ResBlocks, D = 43 (HEPMASS-like), d = 21, batch 512.
        f, g = build_autoencoder("tabular", data_shape=(43,), latent_dim=21)
        x = torch.randn(512, 43, generator=generator)
        benches.append(Bench("mlp", "tabular MLP, D=43, d=21, batch 512", f, g, x))
    if "conv" in names:
        # Pythae benchmark ConvNet for MNIST (FIF table 9, BatchNorm), d = 16, batch 128.
        f, g = build_autoencoder("pythae_convnet", data_shape=(1, 28, 28), latent_dim=16)
        x = torch.rand(128, 1, 28, 28, generator=generator)
        benches.append(Bench("conv", "Pythae ConvNet (MNIST), d=16, batch 128", f, g, x))
    for b in benches:
        b.encoder.to(device).train()
        b.decoder.to(device).train()
        b.batch = b.batch.to(device)
    return benches


def reconstruction(x: Tensor, x_hat: Tensor) -> Tensor:
    return (x_hat - x).pow(2).flatten(1).sum(1)


def estimators_at(rev: str) -> ModuleType:
    """``injflow/estimators.py`` as of git revision ``rev``, as a module: the FIF steps of an earlier version can
    then be timed against the current ones in the same process (interleaved), which is how "before/after" ratios
    are measured on a shared machine."""
    repo = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{rev}:injflow/estimators.py"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout
    module = ModuleType(f"injflow_estimators_at_{rev}")
    exec(compile(source, f"{rev}:injflow/estimators.py", "exec"), module.__dict__)
    return module


def fif_variants(bench: Bench, estimators: ModuleType = E, suffix: str = "") -> dict[str, Callable[[Tensor], Tensor]]:
    """``fif-<mode>-k<K><suffix>``: the FIF loss of ``estimators`` (this checkout's by default), K = 1, 2, 4."""
    f, g = bench.encoder, bench.decoder
    return {
        f"fif-{mode}-k{k}{suffix}": (
            lambda x, mode=mode, k=k: estimators.fif_loss(x, f, g, beta=BETA, n_hutchinson=k, mode=mode)["loss"].mean()
        )
        for mode in ("mixed", "forward", "backward")
        for k in (1, 2, 4)
    }


def variants(bench: Bench, baseline_rev: str | None = None) -> dict[str, Callable[[Tensor], Tensor]]:
    f, g = bench.encoder, bench.decoder
    out: dict[str, Callable[[Tensor], Tensor]] = {}
    out["ae"] = lambda x: reconstruction(x, g(f(x))).mean()
    out.update(fif_variants(bench))
    if baseline_rev:
        out.update(fif_variants(bench, estimators_at(baseline_rev), f"@{baseline_rev}"))

    def injflow(x: Tensor, jacobian: str) -> Tensor:
        t = E.injflow_ln_terms(x, f, g, jacobian=jacobian)
        return (t["prior"] + BETA * t["reconstruction"] + t["log_frobenius"] + t["injectivity"]).mean()

    out["injflow-ln-jvp"] = lambda x: injflow(x, "jvp")
    out["injflow-ln-fd"] = lambda x: injflow(x, "finite_difference")

    def rectangular(x: Tensor) -> Tensor:
        z, x_hat, s, _ = E.rectangular_flow_surrogate(x, f, g, cg_tol=1e-4)
        return (-E.standard_normal_log_prob(z) + s + BETA * reconstruction(x, x_hat)).mean()

    out["rectangular-flow-cg"] = rectangular

    def exact(x: Tensor) -> Tensor:
        z = f(x)
        x_hat = g(z)
        return (-E.standard_normal_log_prob(z) + E.decoder_log_volume(g, z) + BETA * reconstruction(x, x_hat)).mean()

    out["exact-logdet"] = exact
    return out


def compiled_variants(bench: Bench, ks: tuple[int, ...] = (1, 4)) -> dict[str, Callable[[], dict]]:
    """FIF K samples and the AE as torch.func functions of the parameters, gradients by ``torch.func.grad``, all
    under ``torch.compile``. Same estimator as ``fif_loss`` in mixed mode (encoder VJP, decoder JVP, sg)."""
    from torch.func import functional_call, grad, jvp, vjp

    f, g = bench.encoder, bench.decoder

    def fif(pe, pd, x, eps):
        z, encoder_vjp = vjp(lambda u: functional_call(f, pe, (u,)), x)
        x_hat = None
        surrogate = 0.0
        for e in eps:  # K Hutchinson samples (FIF eq. 17)
            out, decoder_jvp = jvp(lambda w: functional_call(g, pd, (w,)), (z,), (e,))
            x_hat = out if x_hat is None else x_hat
            (eps_f,) = encoder_vjp(e)
            surrogate = surrogate - (eps_f * decoder_jvp.detach()).sum(1) / len(eps)
        nll = 0.5 * z.pow(2).sum(1) + surrogate
        return (nll + BETA * reconstruction(x, x_hat)).mean()

    def ae(pe, pd, x, eps):
        return reconstruction(x, functional_call(g, pd, (functional_call(f, pe, (x,)),))).mean()

    out = {"ae-compiled": torch.compile(grad(ae, argnums=(0, 1)))}
    for k in ks:
        out[f"fif-mixed-k{k}-compiled"] = (torch.compile(grad(fif, argnums=(0, 1))), k)
    return out


def compiled_gradient_error(fn, k: int, bench: Bench) -> float:
    """Largest |difference| between the compiled gradient and ``fif_loss``'s eager gradient for the same noise."""
    f, g, x = bench.encoder, bench.decoder, bench.batch
    params = list(f.parameters()) + list(g.parameters())
    loss = E.fif_loss(x, f, g, beta=BETA, n_hutchinson=k, generator=torch.Generator(x.device).manual_seed(0))["loss"].mean()
    want = torch.autograd.grad(loss, params)
    eps = E.sample_noise(x.shape[0], (f(x[:2]).shape[1],), k, "orthogonal", dtype=x.dtype, device=x.device,
                         generator=torch.Generator(x.device).manual_seed(0))
    pe = {n: p.detach() for n, p in f.named_parameters()}
    pd = {n: p.detach() for n, p in g.named_parameters()}
    got = fn(pe, pd, x, eps)
    return max(float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in zip([*got[0].values(), *got[1].values()], want))


def compiled_step_fn(fn, k: int, bench: Bench, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    f, g = bench.encoder, bench.decoder
    pe = {n: p.detach() for n, p in f.named_parameters()}  # share storage: the optimiser updates them in place
    pd = {n: p.detach() for n, p in g.named_parameters()}
    params = list(f.parameters()) + list(g.parameters())
    with torch.no_grad():
        d = f(bench.batch[:2]).shape[1]

    def step() -> None:
        eps = E.sample_noise(bench.batch.shape[0], (d,), k, "orthogonal", dtype=bench.batch.dtype, device=bench.batch.device)
        grads = fn(pe, pd, bench.batch, eps)
        for p, gr in zip(params, [*grads[0].values(), *grads[1].values()]):
            p.grad = gr
        optimizer.step()

    return step


def step_fn(loss: Callable[[Tensor], Tensor], bench: Bench, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        value = loss(bench.batch)
        value.backward()
        optimizer.step()

    return step


def saved_tensor_mib(step: Callable[[], None]) -> float:
    """Memory the autograd graph of one step holds: unique storages saved for backward (MiB).

    CPU has no allocator statistics, so this is the CPU stand-in for peak step memory (activations
    dominate it; parameters and optimiser state are the same for every variant)."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except RuntimeError:  # dual (forward-AD) tensors expose no storage pointer: count the tensor itself
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values()) / 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(
    bench: Bench,
    names: list[str] | None,
    rounds: int,
    warmup: int,
    device: torch.device,
    compiled: bool = False,
    measure_saved: bool = True,
    baseline_rev: str | None = None,
) -> dict[str, dict]:
    """Times the variants ``names`` (plus ``ae``) of ``bench`` interleaved; ``measure_saved`` adds one step per variant
    to count the tensors saved for backward; ``baseline_rev`` adds ``fif-*@REV`` variants, the FIF loss of
    ``injflow/estimators.py`` at that git revision."""
    params = list(bench.encoder.parameters()) + list(bench.decoder.parameters())
    # A tiny learning rate keeps the nets where they started, so every variant times the same function.
    optimizer = torch.optim.Adam(params, lr=1e-8)
    losses = variants(bench, baseline_rev)
    if compiled:
        names = ["ae", "fif-mixed-k1", "fif-mixed-k4"]
    if names:
        unknown = set(names) - set(losses)
        if unknown:
            raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {sorted(losses)}")
        losses = {k: v for k, v in losses.items() if k in names or k == "ae"}
    steps = {name: step_fn(loss, bench, optimizer) for name, loss in losses.items()}
    if compiled:
        # The compiled and eager estimators must agree before their times mean anything.
        for name, spec in compiled_variants(bench).items():
            fn, k = spec if isinstance(spec, tuple) else (spec, 1)
            if name.startswith("fif"):
                error = compiled_gradient_error(fn, k, bench)
                print(f"  {name}: max relative gradient difference to eager fif_loss {error:.1e}", flush=True)
                if error > 1e-3:
                    raise SystemExit(f"{name} disagrees with the eager estimator ({error:.1e}); not timing it")
            steps[name] = compiled_step_fn(fn, k, bench, optimizer)

    memory: dict[str, float] = {}
    saved: dict[str, float] = {}

    def measure_memory(name: str) -> None:
        saved[name] = saved_tensor_mib(steps[name]) if measure_saved else float("nan")
        if device.type == "cuda":
            synchronize(device)
            optimizer.zero_grad(set_to_none=True)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            steps[name]()
            synchronize(device)
            memory[name] = (torch.cuda.max_memory_allocated(device) - base) / 2**20

    times = time_interleaved(steps, rounds=rounds, warmup=warmup, synchronize=lambda: synchronize(device),
                             after_warmup=measure_memory)
    results = {}
    for name, timing in times.items():
        ratio, q1, q3 = paired_ratio(timing, times["ae"])
        results[name] = {
            "median_ms": 1e3 * timing.median,
            "ratio": timing.median / times["ae"].median,
            "iqr_ms": 1e3 * timing.iqr,
            "paired_ratio": ratio,
            "paired_ratio_iqr": (q1, q3),
        }
        results[name]["saved_mib"] = saved[name]
        results[name]["saved_ratio"] = saved[name] / saved["ae"]
        if name in memory:
            results[name]["peak_mib"] = memory[name]
            results[name]["memory_ratio"] = memory[name] / memory["ae"]
    return results


def markdown(all_results: dict[str, dict], benches: list[Bench], header: str) -> str:
    lines = [header, ""]
    for bench in benches:
        results = all_results[bench.name]
        n_params = count_parameters(bench.encoder) + count_parameters(bench.decoder)
        lines += [f"**{bench.description}** ({n_params / 1e6:.2f}M parameters)", ""]
        has_memory = any("peak_mib" in r for r in results.values())
        cols = "| variant | median step (ms) | IQR (ms) | × AE step (paired, IQR) | saved for backward (MiB) | × AE |"
        cols += " peak step memory (MiB) | × AE memory |" if has_memory else ""
        lines += [cols, "|" + "---|" * (cols.count("|") - 1)]
        for name, r in results.items():
            saved = f"{r['saved_mib']:.1f} | {r['saved_ratio']:.2f}" if r["saved_mib"] > 0 else "n/a (no autograd graph) | n/a"
            q1, q3 = r["paired_ratio_iqr"]
            row = f"| {name} | {r['median_ms']:.1f} | {r['iqr_ms']:.1f} | {r['paired_ratio']:.2f} ({q1:.2f}–{q3:.2f}) | {saved} |"
            if has_memory:
                row += f" {r.get('peak_mib', float('nan')):.0f} | {r.get('memory_ratio', float('nan')):.2f} |"
            lines.append(row)
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--nets", default="mlp,conv")
    parser.add_argument("--variants", default="", help="comma-separated subset (ae is always included)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add torch.func + torch.compile FIF and AE steps")
    parser.add_argument("--baseline-rev", help="also time fif-*@REV: the FIF loss of injflow/estimators.py at git REV")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--json", help="write raw results here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    benches = make_benches(args.nets.split(","), device)
    names = [v for v in args.variants.split(",") if v] or None
    all_results = {}
    for bench in benches:
        print(f"== {bench.description}", flush=True)
        all_results[bench.name] = run(bench, names, args.rounds, args.warmup, device, compiled=args.compile,
                                      baseline_rev=args.baseline_rev)
        for name, r in all_results[bench.name].items():
            extra = f"  saved {r['saved_mib']:.1f} MiB ({r['saved_ratio']:.2f}x)"
            extra += f"  peak {r['peak_mib']:.0f} MiB ({r['memory_ratio']:.2f}x)" if "peak_mib" in r else ""
            q1, q3 = r["paired_ratio_iqr"]
            print(f"  {name:22s} {r['median_ms']:9.1f} ms  {r['paired_ratio']:5.2f}x ({q1:.2f}-{q3:.2f}){extra}", flush=True)
    header = (f"Machine: {machine(device, args.threads)}; {args.rounds} interleaved rounds after {args.warmup} warm-up "
              f"steps; load average {load_average()} at the end.")
    table = markdown(all_results, benches, header)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(table + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(device, args.threads), "results": all_results}, fh, indent=2)


if __name__ == "__main__":
    main()
