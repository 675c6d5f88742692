"""FID against peers, the TF-FID pre-processing variants, reference sets, and the Inception Score path (issue 14)."""

from __future__ import annotations

import ast
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import injflow.metrics as M
from injflow.metrics import peers
from injflow.metrics.inception import _resize_tf1_bilinear
from injflow.metrics.inception_score import IS_CLASSIFIER_ENV


def _features(n: int, p: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(p, p)) / np.sqrt(p)
    a = rng.normal(size=(n, p)) @ mix * 3.0
    b = a[::-1] * 1.2 + rng.normal(size=(n, p)) @ mix + 0.3  # different mean and non-commuting covariance
    return a, b


@pytest.mark.parametrize("n, p", [(600, 48), (80, 200)], ids=["full-rank", "singular n<p"])
@pytest.mark.parametrize("peer", ["pytorch-fid", "torch-fidelity"])
def test_frechet_distance_equals_the_peers(peer, n, p):
    get = {"pytorch-fid": peers.pytorch_fid_distance, "torch-fidelity": peers.torch_fidelity_distance}[peer]
    try:
        theirs = get()
    except peers.PeerUnavailableError as e:
        pytest.skip(str(e))
    a, b = _features(n, p, seed=n)
    fa, fb = M.gaussian_fit(a), M.gaussian_fit(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's deprecation of pytorch-fid's sqrtm(disp=...)
        ref = float(theirs(fa.mean, fa.cov, fb.mean, fb.cov))
    ours = M.frechet_distance(fa, fb)
    assert ref > 1.0
    assert ours == pytest.approx(ref, rel=1e-6)
    # and a wrong distance would be caught: dropping the cross term changes the number far beyond the tolerance
    assert float(theirs(fa.mean, fa.cov, fa.mean + 1e-3, fb.cov)) != pytest.approx(ref, rel=1e-3)


def test_peers_come_from_the_installed_packages_source():
    found = peers.peer_distances()
    if not found:
        pytest.skip("neither pytorch-fid nor torch-fidelity is installed (scripts/setup.sh installs both)")
    mu, cov = np.zeros(2), np.eye(2)
    for name, fn in found.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert float(fn(mu, cov, np.ones(2), 4 * cov)) == pytest.approx(4.0), name  # 2 + 2·(2 − 1)²


def _fid_helper_nv_bilinear():
    """fid-helper-pytorch's `nv_bilinear` (their emulation of TF1's resize), compiled from its source file."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None:
        pytest.skip("fid-helper-pytorch is not installed (scripts/setup.sh installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / "_resample_func.py"
    node = next(n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == "nv_bilinear")
    node.decorator_list = []  # torch.jit.script: the same arithmetic eagerly
    ns = {"torch": torch}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), ns)
    return ns["nv_bilinear"]


@pytest.mark.parametrize("side", [28, 32, 64])
def test_tf_bilinear_resize_matches_fid_helpers_tf_emulation(side):
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(side))
    theirs = _fid_helper_nv_bilinear()(x, (299, 299))
    ours = _resize_tf1_bilinear(x, 299)
    assert (ours - theirs).abs().max() < 2e-5
    # ... and it is a different resize from torch's half-pixel bilinear (the difference we measure)
    torch_bilinear = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    assert (ours - torch_bilinear).abs().max() > 1e-2


def test_tf_preprocessing_variants():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    base = M.preprocess_images(x, size=8)
    assert torch.equal(base, 2 * x.expand(-1, 3, -1, -1) - 1)  # no resize at equal size
    tf = M.preprocess_images(x, size=8, input_range="tf")
    assert torch.allclose(tf, x.expand(-1, 3, -1, -1) * 255 / 128 - 1)
    assert float(M.preprocess_images(torch.ones(1, 1, 8, 8), size=8, input_range="tf").max()) == 127 / 128
    q = M.preprocess_images(x, size=8, quantize=True)
    assert torch.allclose((q + 1) / 2 * 255, ((q + 1) / 2 * 255).round(), atol=1e-4)  # on the 8-bit grid
    assert not torch.equal(q, base)
    u8 = torch.randint(0, 256, (3, 1, 8, 8)).float() / 255  # data that already is 8-bit: quantising is the identity
    assert torch.equal(M.preprocess_images(u8, size=8, quantize=True), M.preprocess_images(u8, size=8))
    with pytest.raises(ValueError, match="input_range"):
        M.preprocess_images(x, input_range="caffe")


def test_extractor_identity_names_the_non_default_preprocessing():
    try:
        plain = M.InceptionFeatureExtractor()
    except M.InceptionWeightsMissingError as e:
        pytest.skip(f"needs default_1.pt: {e}")
    tf = M.InceptionFeatureExtractor(**M.inception.TF_FID_PREPROCESSING)
    assert ";quantize" not in plain.identity and ";input=" not in plain.identity  # default cache keys unchanged
    assert "resize=tf_bilinear" in tf.identity and "quantize=uint8" in tf.identity and "input=tf" in tf.identity


def test_offline_inception_has_no_classifier_head():
    """What the IS finding rests on: the shipped TorchScript has no 2-D (fc) weight and returns 2048 features."""
    try:
        path = M.find_inception_weights()
    except M.InceptionWeightsMissingError as e:
        pytest.skip(f"needs default_1.pt: {e}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = torch.jit.load(str(path), map_location="cpu")
    state = net.state_dict()
    assert state and not [k for k, v in state.items() if v.ndim == 2]
    assert "2048" in net.net.code


class _StandIn(torch.nn.Module):
    """A 'classifier' whose logits are sharp in the mean brightness bucket: 4 classes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = (x.mean(dim=(1, 2, 3)) + 1) / 2  # [-1, 1] input → brightness in [0, 1]
        centres = torch.tensor([0.125, 0.375, 0.625, 0.875])
        return -200.0 * (m[:, None] - centres) ** 2


def test_inception_score_through_a_torchscript_classifier_by_path(tmp_path, monkeypatch):
    path = tmp_path / "logits.pt"
    torch.jit.script(_StandIn()).save(str(path))
    # 4 equally frequent, confidently classified brightness levels: IS ≈ 4; one level only: IS ≈ 1
    levels = torch.tensor([0.125, 0.375, 0.625, 0.875]).repeat(25)
    images = levels[:, None, None, None].expand(-1, 1, 6, 6).clone()
    clf = M.LogitsClassifier(path, size=6)
    assert M.inception_score_of_images(images, clf, splits=5)[0] == pytest.approx(4.0, rel=1e-3)
    assert M.inception_score_of_images(images[::4], clf, splits=5)[0] == pytest.approx(1.0, rel=1e-3)
    monkeypatch.setenv(IS_CLASSIFIER_ENV, str(path))
    assert M.find_logits_classifier(size=6)(images[:2]).shape == (2, 4)
    monkeypatch.delenv(IS_CLASSIFIER_ENV)
    with pytest.raises(M.LogitsUnavailableError, match="no classifier head"):
        M.inception_score_of_images(images, None)
    with pytest.raises(M.LogitsUnavailableError, match="not a file"):
        M.LogitsClassifier(tmp_path / "missing.pt")


def test_reference_sets_and_the_disjoint_protocol(tmp_path):
    x = torch.rand(20, 1, 4, 4)
    paper = M.fid_protocol(x, dataset="toy", split="test", n=10, disjoint=False)
    assert torch.equal(paper.reconstruct, paper.reference.images)  # the papers at n = the whole split
    small = M.fid_protocol(x, dataset="toy", split="test", n=10, disjoint=True)
    assert small.reference.label == "toy-test-10-20" and torch.equal(small.reconstruct, x[:10])
    rec = {tuple(r.flatten().tolist()) for r in small.reconstruct}
    assert not rec & {tuple(r.flatten().tolist()) for r in small.reference.images}  # no image against itself
    with pytest.raises(ValueError, match="needs 22 images"):
        M.fid_protocol(x, dataset="toy", split="test", n=11, disjoint=True)
    with pytest.raises(ValueError, match="n >= 2"):
        M.reference_set(x, dataset="toy", split="val", n=5, start=18)

    class Pixels(torch.nn.Module):
        identity = "pixels-test"

        def forward(self, images):
            return images.flatten(1)

    cache = M.ReferenceStatsCache(tmp_path)
    stats, hit = small.reference.stats(Pixels(), cache)
    again, hit2 = small.reference.stats(Pixels(), cache)
    assert not hit and hit2 and np.array_equal(stats.cov, again.cov)
    assert any(p.name.startswith("toy-test-10-20-n10-") for p in tmp_path.iterdir())


def test_dataset_reference_is_a_fixed_slice_of_the_whole_split():
    ref = M.dataset_reference("digits", "test", n=50, start=10)
    full = M.dataset_reference("digits", "test", n=None)
    assert ref.n == 50 and torch.equal(ref.images, full.images[10:60]) and ref.label == "digits-test-10-60"
    with pytest.raises(ValueError, match="random subset"):
        M.dataset_reference("digits", "test", n_test=100)
