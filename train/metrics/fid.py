"""FID and KID between image sets (torchmetrics), on Inception-v3 features (torch-fidelity's port of the
TensorFlow FID weights) or on a custom extractor; features are extracted once per image set, so every pair
of sets and every category costs no second Inception pass. Without weights the metrics are skipped with a
note, never failed."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from core.errors import ConfigError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
KID_MAX_SUBSET = 1000  # torchmetrics' default subset size; never more than the images there are


class _Passthrough(torch.nn.Module):
    """Hands torchmetrics features extracted beforehand: FID and KID for every pair of image sets and every
    category then cost one extractor pass per image, not one per comparison."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_kid(real: torch.Tensor, fake: torch.Tensor, seed: int) -> tuple[float | None, float | None]:
    """(FID, KID mean) between two feature sets, None with fewer than 2 features on a side (neither is
    defined). KID's subset size is at most the smaller set; its random subsets are seeded."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real), len(fake))
    if n < 2:
        return None, None
    passthrough = _Passthrough(real.shape[1])
    fid = FrechetInceptionDistance(feature=passthrough)
    with warnings.catch_warnings():  # "will save all extracted features": they are ours, already in memory
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=passthrough, subset_size=min(n, KID_MAX_SUBSET))
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        kid_mean, _ = kid.compute()
    return max(float(fid.compute()), 0.0), float(kid_mean)


def feature_extractor(inception_weights: str | None, custom: torch.nn.Module | None) -> tuple[Any, dict[str, Any]]:
    """(extractor or None, {"features": what FID/KID run on, "note": why skipped}). A custom module wins;
    otherwise Inception-v3 (torch-fidelity's port of the TF FID weights) from `inception_weights` or from
    torch's hub cache, where torch-fidelity keeps a downloaded copy. Offline without either: skipped."""
    if custom is not None:
        return custom, {"features": f"custom extractor {type(custom).__name__}", "note": None}
    path = Path(inception_weights) if inception_weights else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        return None, {"features": None, "note": "skipped: no Inception-v3 weights (torch-fidelity downloads them, "
                                                f"which needs the network); pass --inception-weights PATH ({INCEPTION_FILE})"}
    try:
        module = _inception(path)
    except Exception as exc:  # a wrong or damaged file: the other metrics still run
        return None, {"features": None, "note": f"skipped: Inception-v3 weights {path} did not load ({one_line(exc, 200)})"}
    return module, {"features": f"Inception-v3 pool3 (2048-d), torch-fidelity weights {path}", "note": None}


def _inception(path: Path) -> torch.nn.Module:
    """torch-fidelity's Inception-v3 with the weights at `path`. torch-fidelity would torch.load the file with
    weights_only=False (a pickle can run code), so it is read here with weights_only=True, checked to hold
    tensors only, and handed over as a file of just those."""
    import tempfile

    from torchmetrics.image.fid import NoTrainInceptionV3

    from train.weights import load_torch

    state = load_torch(path, "Inception-v3 weights")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    with tempfile.TemporaryDirectory() as tmp:
        checked = Path(tmp) / INCEPTION_FILE
        torch.save(state, checked)
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                  feature_extractor_weights_path=str(checked))


@torch.no_grad()
def extract_features(extractor: torch.nn.Module, images: list[Any], device: Any, batch_size: int) -> torch.Tensor:
    """(N, d) float64 features of PIL images, fed as the uint8 (N, 3, H, W) batches torchmetrics expects."""
    import numpy as np

    extractor = extractor.to(device).eval()
    out = []
    for start in range(0, len(images), batch_size):
        chunk = np.stack([np.asarray(im.convert("RGB")) for im in images[start : start + batch_size]])
        out.append(extractor(torch.from_numpy(chunk).permute(0, 3, 1, 2).to(device)).double().cpu())
    return torch.cat(out).flatten(1)


def load_reference_images(folder: str | Path, resolution: int) -> list[Any]:
    """The image files directly in `folder`, as RGB at the sampled resolution: both sets then reach the
    extractor alike. A folder without one readable image is an error (FID against nothing)."""
    from PIL import Image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(image.convert("RGB").resize((resolution, resolution), Image.BICUBIC))
        except OSError as exc:
            warnings.warn(f"--reference-images: skipped {file} ({exc})")
    if not images:
        raise ConfigError(f"--reference-images {folder}: no readable image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                          "directly in it")
    return images
