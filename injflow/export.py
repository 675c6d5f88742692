r"""The encoder, the decoder and a sampler's decode path as graphs for use outside injflow: ONNX and ``torch.export``.

Three graphs per model (inputs and outputs named as below; the batch dimension is dynamic):

- ``encoder``: ``x`` (B, \*data_shape) [, ``c`` (B,) int64 class labels] → ``z`` (B, d), the encoder :math:`f`;
- ``decoder``: ``z`` (B, d) [, ``c``] → ``x`` (B, \*data_shape), the decoder :math:`g`;
- ``sample_<sampler>``: the decode path of ``flow.sample`` with its randomness as inputs (so any runtime can draw
  it): ``eps`` (B, d) standard-normal noise, ``temperature`` (a scalar), for a mixture also ``u`` (B,) uniform in
  [0, 1), [``c``] → ``x`` = :math:`g(z)` with :math:`z = \mu + T L\epsilon` (``gaussian``; Σ = LLᵀ),
  :math:`z = \mu_k + T L_k \epsilon` with :math:`k = \min\{k : \sum_{j \le k} w_j > u\}` (``gmm``, inverse CDF of
  the weights), or :math:`z = T\sigma\epsilon` (the normal prior). The Student-t prior needs a gamma draw and is
  not exported (export the decoder and draw :math:`z` yourself).

:func:`export_flow` writes ``<name>.onnx`` files (``torch.onnx.export`` with the ``torch.export``-based exporter)
or ``<name>.pt2`` files (``torch.export.save``; load with ``torch.export.load(path).module()``), in evaluation mode
(BatchNorm with its running statistics). :func:`check_export` runs the written graphs — in ``onnxruntime`` for ONNX —
on given inputs (``injflow export`` uses the run's test split) against the PyTorch model and reports the largest
difference per graph, absolute and relative to the largest reference value (:math:`\max|a-b| / \max|b|`).

Example:
    >>> import tempfile
    >>> flow = InjectiveFlow.from_config("configs/default.yaml", data_shape=(2,), data_kind="toy")
    >>> files = export_flow(flow, tempfile.mkdtemp(), format="torch-export")
    >>> sorted(files)
    ['decoder', 'encoder', 'sample_prior']
    >>> report = check_export(flow, files, torch.randn(64, 2), format="torch-export")
    >>> all(r["relative"] <= 1e-4 for r in report.values())
    True
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .distributions import FullCovarianceGaussian, GaussianMixture, IsotropicNormal, LatentDistribution
from .errors import InjflowError
from .model import InjectiveFlow

__all__ = [
    "ExportError",
    "FORMATS",
    "TOLERANCE",
    "Encoder",
    "Decoder",
    "SamplerDecoder",
    "graphs",
    "export_flow",
    "check_export",
    "export_run",
]

#: Export formats and their file suffixes.
FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}
#: The largest relative difference :func:`check_export` accepts (float32 graphs agree to about 1e-6).
TOLERANCE = 1e-4


class ExportError(InjflowError, RuntimeError):
    """An export cannot be written (a package is missing) or its graphs do not compute what the model computes."""


def _scaler(flow: InjectiveFlow) -> nn.Module | None:
    """The model's scaler (``data.standardize``) when it changes the units, so the graphs work in the user's units."""
    return flow.scaler if flow.scaled else None


class Encoder(nn.Module):
    """:math:`z = f(s(x))` (or :math:`f(s(x), c)`) of a model, as a plain module (no label checks: graphs cannot raise);
    :math:`s` is the model's scaler (user units → model units) when it has one."""

    def __init__(self, flow: InjectiveFlow) -> None:
        super().__init__()
        self.net = flow.encoder
        self.scaler = _scaler(flow)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        if self.scaler is not None:
            x = self.scaler(x)
        return self.net(x) if c is None else self.net(x, c)


class Decoder(nn.Module):
    r""":math:`\hat x = s^{-1}(g(z))` (or with :math:`g(z, c)`) of a model, as a plain module, in the user's units."""

    def __init__(self, flow: InjectiveFlow) -> None:
        super().__init__()
        self.net = flow.decoder
        self.scaler = _scaler(flow)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        x = self.net(z) if c is None else self.net(z, c)
        return x if self.scaler is None else self.scaler.inverse(x)


class SamplerDecoder(nn.Module):
    r"""``flow.sample``'s decode path with its noise as inputs: ``(eps, temperature[, u][, c]) -> g(z)``.

    Arguments:
        flow: The model.
        sampler: ``prior`` (a normal prior), ``gaussian`` or ``gmm`` (post-fit samplers of the model).

    With a normal prior or a Gaussian sampler, ``eps`` drawn as ``flow.sample(seed=s)`` draws it
    (``torch.randn(n, d, generator=torch.Generator().manual_seed(s))``) gives the same samples.
    """

    def __init__(self, flow: InjectiveFlow, sampler: str = "prior") -> None:
        super().__init__()
        dist: LatentDistribution = flow.sampler(sampler)
        self.decoder = Decoder(flow)
        self.kind = _noise_kind(dist, sampler)
        # Own, contiguous copies (Cholesky factors come out column-major; the archive writers want whole tensors).
        own = lambda t: t.detach().clone(memory_format=torch.contiguous_format)
        if self.kind == "scaled":
            self.scale = float(getattr(dist, "sigma", 1.0))
        elif self.kind == "gaussian":
            self.register_buffer("mean", own(dist.mean))
            self.register_buffer("scale_tril", own(dist.scale_tril))
        else:
            self.register_buffer("means", own(dist.means))
            self.register_buffer("scale_tril", own(dist.scale_tril))
            self.register_buffer("cumulative", own(torch.cumsum(dist.weights.double(), 0)[:-1].to(dist.means.dtype)))

    @property
    def needs_uniform(self) -> bool:
        """Whether the graph takes ``u`` (the mixture component's uniform draw)."""
        return self.kind == "mixture"

    def latent(self, eps: Tensor, temperature: Tensor, u: Tensor | None = None) -> Tensor:
        """:math:`z` from the noise (see the class docstring)."""
        if self.kind == "scaled":
            return eps * (temperature * self.scale)
        if self.kind == "gaussian":
            return self.mean + temperature * (eps @ self.scale_tril.T)
        k = (u[:, None] >= self.cumulative[None, :]).sum(1)  # inverse CDF of the mixture weights
        return self.means[k] + temperature * torch.einsum("nij,nj->ni", self.scale_tril[k], eps)

    def forward(self, eps: Tensor, temperature: Tensor, u: Tensor | None = None, c: Tensor | None = None) -> Tensor:
        return self.decoder(self.latent(eps, temperature, u), c)


def _noise_kind(dist: LatentDistribution, sampler: str) -> str:
    if isinstance(dist, GaussianMixture):
        return "mixture"
    if isinstance(dist, FullCovarianceGaussian):
        return "gaussian"
    if isinstance(dist, IsotropicNormal):  # and StandardNormal
        return "scaled"
    raise ValueError(f"sampler {sampler!r} ({type(dist).__name__}) has no exportable decode path (it needs more than "
                     f"Gaussian and uniform noise); export the decoder and draw z yourself")


def graphs(flow: InjectiveFlow, samplers: list[str] | None = None) -> dict[str, nn.Module]:
    """The modules to export: ``encoder``, ``decoder`` and ``sample_<name>`` for each sampler (default: the prior
    if it is exportable, and every fitted post-fit sampler)."""
    if samplers is None:
        samplers = [name for name in ["prior", *flow.samplers]
                    if name != "prior" or isinstance(flow.latent, IsotropicNormal)]
    out: dict[str, nn.Module] = {"encoder": Encoder(flow), "decoder": Decoder(flow)}
    for name in samplers:
        out[f"sample_{name}"] = SamplerDecoder(flow, name)
    return out


def example_inputs(flow: InjectiveFlow, name: str, module: nn.Module, n: int = 2) -> dict[str, Tensor]:
    """Inputs of graph ``name`` (named as in the graph) for ``n`` rows: zeros, labels 0, temperature 1."""
    dtype = next(flow.parameters()).dtype
    if name == "encoder":
        inputs = {"x": torch.zeros(n, *flow.data_shape, dtype=dtype)}
    elif name == "decoder":
        inputs = {"z": torch.zeros(n, flow.latent_dim, dtype=dtype)}
    else:
        inputs = {"eps": torch.zeros(n, flow.latent_dim, dtype=dtype), "temperature": torch.ones((), dtype=dtype)}
        if module.needs_uniform:
            inputs["u"] = torch.full((n,), 0.5, dtype=dtype)
    if flow.conditional:
        inputs["c"] = torch.zeros(n, dtype=torch.long)
    return inputs


@contextmanager
def _evaluation(flow: InjectiveFlow) -> Iterator[None]:
    """Evaluation mode (BatchNorm's running statistics) on the CPU, without torch.onnx's chatter; restored after."""
    was_training, device = flow.training, flow.device
    flow.eval().to("cpu")
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*torchvision.*")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        flow.train(was_training).to(device)


def _dynamic_shapes(inputs: dict[str, Tensor]) -> dict[str, Any]:
    batch = torch.export.Dim("batch", min=1)
    return {name: ({0: batch} if value.ndim else None) for name, value in inputs.items()}


def export_flow(flow: InjectiveFlow, directory: str | Path, *, format: str = "onnx",
                samplers: list[str] | None = None) -> dict[str, Path]:
    """Writes the model's graphs (:func:`graphs`) to ``directory``; returns ``{graph name: file}``.

    Arguments:
        flow: The model (its data shape must be known).
        directory: The folder (created).
        format: ``onnx`` or ``torch-export``.
        samplers: Which decode paths (default: the prior when normal, and every fitted post-fit sampler).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if flow.data_shape is None:
        raise ValueError("the model does not know its data shape; set it with flow.describe_data(shape) first")
    if format == "onnx":
        _require("onnx", "onnxscript")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _evaluation(flow):
        modules = graphs(flow, samplers)
        if format == "onnx":
            return _export_onnx(flow, modules, directory)
        files = {}
        for name, module in modules.items():
            inputs = example_inputs(flow, name, module)
            program = torch.export.export(module, (), kwargs=inputs, dynamic_shapes=_dynamic_shapes(inputs), strict=False)
            files[name] = directory / f"{name}{FORMATS[format]}"
            torch.export.save(program, files[name])
    return files


class _Bundle(nn.Module):
    """Every graph in one module (one ONNX export; see :func:`_export_onnx`), one output per graph."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        self.graphs = nn.ModuleDict(modules)

    def forward(self, x: Tensor, z: Tensor, eps: Tensor | None = None, temperature: Tensor | None = None,
                u: Tensor | None = None, c: Tensor | None = None) -> tuple[Tensor, ...]:
        outputs = []
        for name, module in self.graphs.items():
            if name == "encoder":
                outputs.append(module(x, c))
            elif name == "decoder":
                outputs.append(module(z, c))
            else:
                outputs.append(module(eps, temperature, u if module.needs_uniform else None, c))
        return tuple(outputs)


def _export_onnx(flow: InjectiveFlow, modules: dict[str, nn.Module], directory: Path) -> dict[str, Path]:
    """One ``torch.onnx.export`` of all graphs together, then one file per graph (``onnx.utils.extract_model``).

    ``torch.onnx.export`` rebuilds its operator table (seconds of parsing) on every call; exporting the graphs
    together pays that once, and extracting each graph's inputs-to-output subgraph gives the same files.
    """
    import onnx
    from onnx.utils import extract_model

    inputs: dict[str, Tensor] = {}
    wanted: dict[str, list[str]] = {}
    for name, module in modules.items():
        own = example_inputs(flow, name, module)
        inputs.update(own)
        wanted[name] = list(own)
    bundle = _Bundle(modules)
    outputs = [f"{name}.out" for name in modules]
    program = torch.export.export(bundle, (), kwargs=inputs, dynamic_shapes=_dynamic_shapes(inputs), strict=False)
    whole = directory / f".bundle{FORMATS['onnx']}"
    try:
        torch.onnx.export(program, (), kwargs=inputs, dynamo=True, input_names=list(inputs), output_names=outputs,
                          verbose=False).save(str(whole))
        files = {}
        for name, output in zip(modules, outputs):
            path = directory / f"{name}{FORMATS['onnx']}"
            extract_model(whole, path, wanted[name], [output])
            model = onnx.load(str(path))
            _rename_value(model.graph, output, "z" if name == "encoder" else "x")
            onnx.save(model, str(path))
            files[name] = path
    finally:
        whole.unlink(missing_ok=True)
    return files


def _rename_value(graph: Any, old: str, new: str) -> None:
    """Renames a value of an ONNX graph everywhere it appears (node outputs and inputs, graph outputs)."""
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    for value in graph.output:
        if value.name == old:
            value.name = new


def _require(*packages: str) -> None:
    import importlib

    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError:
            raise ExportError(f"ONNX export needs {package}: pip install 'injflow[onnx]'") from None


def _run_graph(path: Path, inputs: dict[str, Tensor], format: str) -> Tensor:
    if format == "torch-export":
        module = torch.export.load(str(path)).module()
        with torch.no_grad():
            return module(**inputs)
    _require("onnxruntime")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feed = {k: v.numpy() for k, v in inputs.items() if k in names}
    return torch.from_numpy(session.run(None, feed)[0])


def check_export(flow: InjectiveFlow, files: dict[str, Path], x: Tensor, *, c: Tensor | None = None,
                 format: str = "onnx", seed: int = 0, temperature: float = 1.0) -> dict[str, dict[str, float]]:
    r"""Runs the exported graphs and the PyTorch model on the same inputs; returns the largest differences.

    The encoder sees ``x``, the decoder :math:`f(x)`, each sampler graph standard-normal ``eps`` (and uniform ``u``)
    drawn with ``seed``, one row per row of ``x``. Returns ``{graph: {"absolute": max|a-b|, "relative":
    max|a-b| / max|b|, "rows": n}}``, ``b`` being PyTorch's output.
    """
    report: dict[str, dict[str, float]] = {}
    with _evaluation(flow):
        modules = graphs(flow, [name.removeprefix("sample_") for name in files if name.startswith("sample_")])
        x = x.to(next(flow.parameters()).dtype)
        labels = {"c": c.long()} if flow.conditional else {}
        gen = torch.Generator().manual_seed(seed)
        z = Encoder(flow)(x, *labels.values())
        for name, path in files.items():
            module = modules[name]
            if name == "encoder":
                inputs = {"x": x}
            elif name == "decoder":
                inputs = {"z": z}
            else:
                inputs = {"eps": torch.randn(x.shape[0], flow.latent_dim, generator=gen, dtype=x.dtype),
                          "temperature": torch.tensor(float(temperature), dtype=x.dtype)}
                if module.needs_uniform:
                    inputs["u"] = torch.rand(x.shape[0], generator=gen, dtype=x.dtype)
            inputs.update(labels)
            expected = module(**inputs)
            got = _run_graph(path, inputs, format).to(expected.dtype)
            if got.shape != expected.shape:
                raise ExportError(f"{path} returns shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
            absolute = float((got - expected).abs().max())
            report[name] = {"absolute": absolute, "relative": absolute / max(float(expected.abs().max()), 1e-30),
                            "rows": int(x.shape[0])}
    return report


def export_run(run: str | Path, *, format: str = "onnx", out: str | Path | None = None, checkpoint: str | None = None,
               max_rows: int = 1000, verbose: bool = True) -> tuple[dict[str, Path], dict[str, dict[str, float]]]:
    """Exports a run's model (``injflow export RUN --format onnx|torch-export``) and checks the graphs on the first
    ``max_rows`` points of its test split (validation, else training, when it has none); writes ``check.json``
    beside the graphs.

    Raises:
        ExportError: a graph differs from PyTorch by more than :data:`TOLERANCE` (relative).
    """
    from .io import atomic_write_json
    from .loading import load_run, load_run_data

    folder, config, flow = load_run(run, checkpoint=checkpoint)
    data = load_run_data(config)
    for split in ("test", "val", "train"):
        x, c = data.split(split)
        if x is not None:
            break
    x, c = x[:max_rows], None if c is None else c[:max_rows]
    out = Path(out) if out is not None else folder.path / "export" / format
    files = export_flow(flow, out, format=format)
    report = check_export(flow, files, x, c=c, format=format, seed=config.train.seed)
    atomic_write_json(out / "check.json", {"format": format, "split": split, "tolerance": TOLERANCE,
                                            "relative": "max|exported - pytorch| / max|pytorch|", "graphs": report})
    if verbose:
        for name, path in files.items():
            r = report[name]
            print(f"[injflow] {name:<16} -> {path}  (max difference on {r['rows']} {split} rows: {r['absolute']:.2e}, "
                  f"relative {r['relative']:.2e})")
    bad = {name: r for name, r in report.items() if not r["relative"] <= TOLERANCE}
    if bad:
        raise ExportError(f"exported graphs differ from PyTorch by more than {TOLERANCE:g} (relative): {bad}; see "
                          f"{out / 'check.json'}")
    return files, report
