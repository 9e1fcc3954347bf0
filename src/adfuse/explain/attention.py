"""Cross-attention maps: where a model's non-image queries look in the images.

``acmca``: for each test subject, the attention of the clinical queries over the MRI's spatial
tokens and of the genetic queries over the PET's (mean over heads and queries), laid back on the
encoder's feature-map grid and upsampled (bilinear; trilinear for 3D runs) to the prepared slice.

Writes, atomically: ``attention_mri.npy`` and ``attention_pet.npy`` (``[n_subjects, H, W]``, or
``[n_subjects, X, Y, Z]`` for a ``volume3d`` run whose figures show the middle sagittal slice; NaN
for a subject without that image), ``subjects.csv`` (the arrays' rows: id, class, which images
the subject has) and ``attention_<class>.png`` (per class, the mean map over the mean slice).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from adfuse.errors import ConfigError
from adfuse.explain import explainer
from adfuse.io import atomic_write_bytes, atomic_write_text

ROLE_NAMES = {"mri": "MRI", "pet": "PET"}


@explainer("acmca")
def acmca_attention(session, out_dir: Path, batch_size: int = 32) -> dict:
    """Attention maps of the test subjects (see the module docstring); returns a summary."""
    import numpy as np

    model = session.model.eval()
    if model.config.fusion not in ("asymmetric", "symmetric"):
        raise ConfigError(
            f"acmca explain: this run's fusion is '{model.config.fusion}', which has no "
            "clinical -> MRI or genetic -> PET attention to map"
        )
    images = model.image_modalities  # role -> modality
    if not images:
        raise ConfigError("acmca explain: the run has no MRI or PET modality to map attention on")
    test = session.test
    if len(test) == 0:
        raise ConfigError("acmca explain: the test split is empty")

    maps, pictures, present, labels, ids = _collect(model, test, images, batch_size)
    classification = session.task.kind == "classification"
    names = [session.task.classes[int(t)] if classification else "all" for t in labels]
    groups = list(session.task.classes) if classification else ["all"]

    out_dir = Path(out_dir)
    files = [_save_array(out_dir / f"attention_{role}.npy", maps[role]) for role in maps]
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    group_column = "class" if classification else "group"
    writer.writerow(["id", group_column, "target", *(f"has_{role}" for role in maps)])
    for index, subject in enumerate(ids):
        has = [bool(present[role][index]) for role in maps]
        writer.writerow([subject, names[index], labels[index].item(), *has])
    atomic_write_text(out_dir / "subjects.csv", rows.getvalue())
    files.append("subjects.csv")

    per_class = {}
    for group in groups:
        chosen = np.array([name == group for name in names], dtype=bool)
        per_class[group] = int(chosen.sum())
        if not chosen.any():
            continue
        panels = {}
        for role in maps:
            with_image = chosen & present[role]
            if with_image.any():
                mean_image = pictures[role][with_image].mean(axis=0)
                mean_map = maps[role][with_image].mean(axis=0)
                panels[role] = (mean_image, mean_map, int(with_image.sum()))
        name = f"attention_{re.sub(r'[^A-Za-z0-9_-]+', '_', group)}.png"
        _save_figure(out_dir / name, group, panels, images)
        files.append(name)
    return {
        "model": "acmca",
        "subjects": len(ids),
        "per_class": per_class,
        "modalities": dict(images),
        "with_image": {role: int(present[role].sum()) for role in maps},
        "files": files,
    }


def _collect(model, dataset, images: dict[str, str], batch_size: int):
    """Per image role: upsampled attention maps (NaN where the image is absent), the images and
    the presence masks; then the targets and ids; every subject of ``dataset``, in its order."""
    import numpy as np
    import torch
    from torch.nn.functional import interpolate

    device = next(model.parameters()).device
    maps = {role: [] for role in images}
    pictures = {role: [] for role in images}
    present = {role: [] for role in images}
    labels, ids = [], []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.batch(list(range(start, min(start + batch_size, len(dataset)))))
        weights = model.image_attention(batch.to(device))
        for role, modality in images.items():
            picture = batch.inputs[modality].float()  # [B, H, W] (or [B, X, Y, Z] for volume3d)
            grid = model.encoders[modality].grid
            cells = weights[role].float().cpu().view(len(batch), 1, *grid)
            mode = "bilinear" if len(grid) == 2 else "trilinear"
            upsampled = interpolate(cells, size=picture.shape[1:], mode=mode, align_corners=False)
            upsampled = upsampled[:, 0]
            upsampled[~batch.present[modality]] = float("nan")
            maps[role].append(upsampled.numpy())
            pictures[role].append(picture.numpy())
            present[role].append(batch.present[modality].numpy())
        labels.append(batch.target)
        ids.extend(batch.ids)
    stacked = {role: np.concatenate(parts).astype(np.float32) for role, parts in maps.items()}
    pictures_out = {role: np.concatenate(parts) for role, parts in pictures.items()}
    present_out = {role: np.concatenate(parts).astype(bool) for role, parts in present.items()}
    return stacked, pictures_out, present_out, torch.cat(labels), ids


def _save_array(path: Path, array) -> str:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())
    return path.name


def _save_figure(path: Path, group: str, panels: dict, images: dict[str, str]) -> None:
    """One panel per image: the mean attention map (colour) over the mean slice (grey)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * len(images), 4.2), layout="constrained")
    axes = figure.subplots(1, len(images), squeeze=False)[0]
    for axis, (role, modality) in zip(axes, images.items(), strict=True):
        axis.set_axis_off()
        if role not in panels:
            axis.set_title(f"{ROLE_NAMES[role]} ({modality}): no {group} subject has it")
            continue
        mean_image, mean_map, count = panels[role]
        if mean_image.ndim == 3:  # a 3D run: its middle sagittal slice
            middle = mean_image.shape[0] // 2
            mean_image, mean_map = mean_image[middle], mean_map[middle]
        axis.imshow(mean_image.T, cmap="gray", origin="lower")
        shown = axis.imshow(mean_map.T, cmap="inferno", alpha=0.5, origin="lower")
        figure.colorbar(shown, ax=axis, shrink=0.8, label="attention")
        axis.set_title(f"{ROLE_NAMES[role]} ({modality}), {group}: n={count}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
