"""Expert activation per modality combination (PerM-MoE's Fig. 3), for ``permoe`` and ``flexmoe``.

For each non-empty subset S of the run's images (T1, FLAIR, amyloid, tau; a run without images
varies its own modalities), the test subjects who have every image of S are passed with the other
images withheld (as ``adfuse combinations`` does), and the share of the MoE layer's kept top-k
assignments that each expert receives is averaged over their tokens: a heat map of combinations x
experts shows whether experts specialise in combinations (Flex-MoE's router loss, PerM-MoE's
specialization loss) or are used evenly (the balancing loss).

Writes, atomically: ``expert_activation.npy`` (``[combinations, experts]``),
``expert_activation_by_modality.npy`` (``[combinations, routed modalities, experts]``: tokens of
each modality, whose router decided for PerM-MoE), ``expert_activation.csv`` (combination, n
subjects, one column per expert; NaN where no test subject has the combination) and
``expert_activation.png`` (the heat map over all tokens, then one per routed modality).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from adfuse.combinations import IMAGING, image_combinations
from adfuse.errors import ConfigError
from adfuse.explain import explainer
from adfuse.explain.attention import _save_array
from adfuse.io import atomic_write_bytes, atomic_write_text


@explainer("permoe", "flexmoe")
def expert_activation(session, out_dir: Path, batch_size: int = 32) -> dict:
    """Expert activation per image combination over the test split (module docstring)."""
    import numpy as np
    import torch

    model = session.model.eval()
    if getattr(model, "moe", None) is None:
        raise ConfigError(
            f"{model.name} explain: this run has no image modality, hence no experts to show"
        )
    varied = [m for m in IMAGING if m in model.modalities] or list(model.modalities)
    combinations = image_combinations(varied)
    routed = list(model.routed_modalities)
    n_experts = model.moe.n_experts
    device = next(model.parameters()).device
    test = session.test.batch()
    by_modality = np.full((len(combinations), len(routed), n_experts), np.nan)
    subjects = []
    with torch.no_grad():
        for row, kept in enumerate(combinations):
            has_all = torch.stack([test.present[m].bool() for m in kept]).all(dim=0)
            index = has_all.nonzero().flatten()
            subjects.append(len(index))
            if len(index) == 0:
                continue
            chosen = test.select(index).without([m for m in varied if m not in kept])
            shares = []
            for start in range(0, len(chosen), batch_size):
                part = chosen.select(list(range(start, min(start + batch_size, len(chosen)))))
                shares.append(model.expert_usage(part.to(device)).cpu())
            by_modality[row] = torch.cat(shares).mean(dim=0).numpy()
    overall = by_modality.mean(axis=1)

    out_dir = Path(out_dir)
    files = [
        _save_array(out_dir / "expert_activation.npy", overall.astype(np.float32)),
        _save_array(out_dir / "expert_activation_by_modality.npy", by_modality.astype(np.float32)),
    ]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["combination", "n_subjects", *(f"expert_{e}" for e in range(n_experts))])
    names = ["+".join(kept) for kept in combinations]
    for name, count, shares in zip(names, subjects, overall, strict=True):
        writer.writerow([name, count, *(f"{value:.6f}" for value in shares)])
    atomic_write_text(out_dir / "expert_activation.csv", text.getvalue())
    files.append("expert_activation.csv")
    atomic_write_bytes(
        out_dir / "expert_activation.png", _heat_maps(overall, by_modality, names, routed, model)
    )
    files.append("expert_activation.png")
    observed = ~np.isnan(overall).any(axis=1)
    return {
        "model": model.name,
        "combinations": names,
        "subjects": dict(zip(names, subjects, strict=True)),
        "experts": n_experts,
        "routed_modalities": routed,
        "most_used_expert": {
            name: int(np.argmax(shares))
            for name, shares, seen in zip(names, overall, observed, strict=True)
            if seen
        },
        "files": files,
    }


def _heat_maps(overall, by_modality, names, routed, model) -> bytes:
    from matplotlib.figure import Figure

    panels = [("all tokens", overall)] + [
        (f"{modality} tokens", by_modality[:, position]) for position, modality in enumerate(routed)
    ]
    figure = Figure(figsize=(4.2 * len(panels), 0.3 * len(names) + 2.2), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    shown = None
    for number, (axis, (title, values)) in enumerate(zip(axes, panels, strict=True)):
        shown = axis.imshow(values, cmap="viridis", vmin=0, aspect="auto")
        axis.set_title(title)
        axis.set_xlabel("expert")
        axis.set_yticks(range(len(names)), names if number == 0 else [""] * len(names))
    figure.colorbar(shown, ax=axes, shrink=0.8, label="share of top-k assignments")
    figure.suptitle(f"{model.name}: expert activation per modality combination (test subjects)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
