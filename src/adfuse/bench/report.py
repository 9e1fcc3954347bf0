"""``report.html``: one self-contained page (figures as base64 PNG), readable offline.

Sections: the plan, the leaderboard (with the oracle and efficiency), claims, per-pattern heat
maps, data-fraction curves, score against FLOPs and energy, calibration curves, confusion matrices,
the subjects most often misclassified, paired comparisons, interpretability figures found in the
runs' ``explain/`` folders, and the jobs that failed. The page holds no script and loads nothing;
every string that comes from a user, a dataset or a run (labels, notes, subject ids, errors) goes
through ``html.escape``.

``render(..., figures=dict)`` also hands back every figure the page shows as PNG bytes under a file
name (``01-patterns-diagnosis.png``, ...); ``run_benchmark`` writes them into ``OUT/figures/``.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from adfuse.bench.tables import LOWER_IS_BETTER, MAIN_METRIC, REPORTED, RunRecord

if TYPE_CHECKING:
    import pandas as pd

MAX_EXPLAIN_FIGURES = 12
METRIC_CELLS = {m for names in REPORTED.values() for m in names}  # "value [low, high]" text
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;white-space:nowrap}
td.l{white-space:normal}
th{background:#f3f3f3}td.l,th.l{text-align:left}
tr.oracle{background:#eef6ee;font-style:italic}
.holds{background:#d9f2d9}.does-not-hold{background:#f8d7d7}.inconclusive{background:#f4f0d0}
figure{display:inline-block;margin:.5em;vertical-align:top}
figcaption{font-size:.8em;color:#555;max-width:560px}
img{max-width:100%}.note{color:#555;font-size:.9em}
"""


def esc(value: Any) -> str:
    """Any value as escaped text (None/NaN as a dash)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return html.escape(str(value), quote=True)


FORMATS = {
    "parameters": lambda v: f"{v:,.0f}",
    "flops_per_subject": lambda v: f"{v / 1e6:,.1f} M" if v >= 1e5 else f"{v / 1e3:,.1f} k",
    "energy_kwh": lambda v: f"{v:.2e}",
    "train_seconds": lambda v: f"{v:.1f}",
    "n_seeds": lambda v: f"{v:.0f}",
    "misclassified_by": lambda v: f"{v:.0f}",
}


def _number(value: Any, digits: int = 3, column: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if column in FORMATS:
        return esc(FORMATS[column](float(value)))
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return esc(value)


def _with_ci(value, low, high) -> str:
    if not (isinstance(value, float) and math.isfinite(value)):
        return "-"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _img(data: bytes, alt: str = "figure") -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{encoded}">'


def _figure(image: str, caption: str) -> str:
    return f"<figure>{image}<figcaption>{esc(caption)}</figcaption></figure>"


def _table(frame: pd.DataFrame, columns: list[str], row_class=None, digits: int = 3) -> str:
    head = "".join(
        f'<th class="{"l" if frame[c].dtype.kind not in "iuf" and c not in METRIC_CELLS else ""}">'
        f"{esc(c)}</th>"
        for c in columns
    )
    body = []
    for _, row in frame.iterrows():
        cells = []
        for column in columns:
            value = row[column]
            left = frame[column].dtype.kind not in "iuf" and column not in METRIC_CELLS
            text = esc(value).replace("+", "+<wbr>") if left else _number(value, digits, column)
            cells.append(f'<td class="{"l" if left else ""}">{text}</td>')
        css = f' class="{esc(row_class(row))}"' if row_class else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


# ----------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heat_maps(patterns: pd.DataFrame, task: str, fraction: float) -> list[tuple[bytes, str]]:
    """One heat map per set of modalities the rows were trained on (rows x their patterns)."""
    part = patterns[(patterns["task"] == task) & (patterns["fraction"] == fraction)]
    figures = []
    for modalities, rows in part.groupby("modalities", sort=False):
        if rows["pattern"].nunique() < 2:
            continue  # one modality: nothing to withhold
        figures.append((_heat_map(rows, task), f"{task}, trained on {modalities}"))
    return figures


def _heat_map(part: pd.DataFrame, task: str) -> bytes:
    plt = _plt()
    grid = part.pivot_table(index="label", columns="pattern", values="value", sort=False)
    order = part.drop_duplicates("pattern").sort_values("n_modalities", ascending=False)
    grid = grid[[p for p in order["pattern"] if p in grid.columns]]
    metric = part["metric"].iloc[0]
    figure, axis = plt.subplots(figsize=(3 + 0.38 * grid.shape[1], 1.6 + 0.4 * grid.shape[0]))
    colours = "viridis_r" if metric in LOWER_IS_BETTER else "viridis"
    values = grid.to_numpy(dtype=float)
    image = axis.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=colours)
    if values.shape[1] <= 16:
        middle = np.nanmean([np.nanmin(values), np.nanmax(values)])
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                shade = "k" if (value > middle) != (metric in LOWER_IS_BETTER) else "w"
                axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color=shade)
    axis.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
    axis.set_xticks(range(grid.shape[1]), grid.columns, rotation=90, fontsize=7)
    figure.colorbar(image, ax=axis, label=metric, fraction=0.04)
    axis.set_title(f"{task}: {metric} with only the pattern's modalities given at test time")
    return _png(figure)


def fraction_curves(fractions: pd.DataFrame, task: str) -> bytes | None:
    part = fractions[(fractions["task"] == task) & (fractions["label"] != "oracle")]
    if part["fraction"].nunique() < 2:
        return None
    plt = _plt()
    metric = MAIN_METRIC[
        "regression" if "rmse" in part and part["rmse"].notna().any() else "classification"
    ]
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for label, rows in part.groupby("label"):
        rows = rows.sort_values("fraction")
        if rows["fraction"].nunique() < 2:
            continue
        axis.plot(rows["fraction"], rows[metric], marker="o", label=label)
        axis.fill_between(
            rows["fraction"], rows[f"{metric}_low"], rows[f"{metric}_high"], alpha=0.15
        )
    axis.set_xlabel("fraction of the training split")
    axis.set_ylabel(f"{metric} (mean, 95% CI)")
    axis.set_title(f"{task}: data-fraction curves")
    axis.legend(fontsize=7)
    return _png(figure)


def efficiency_scatter(board: pd.DataFrame, task: str) -> bytes | None:
    part = board[(board["task"] == task) & (board["label"] != "oracle")]
    part = part[part["fraction"] == part["fraction"].max()] if not part.empty else part
    if part.empty:
        return None
    plt = _plt()
    classification = "balanced_accuracy" in part and part["balanced_accuracy"].notna().any()
    metric = MAIN_METRIC["classification" if classification else "regression"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, column, name in (
        (axes[0], "flops_per_subject", "forward FLOPs per subject"),
        (axes[1], "energy_kwh", "training energy (kWh, estimate)"),
    ):
        shown = part[part[column].notna() & (part[column] > 0)]
        axis.scatter(shown[column], shown[metric])
        for _, row in shown.iterrows():
            axis.annotate(str(row["label"]), (row[column], row[metric]), fontsize=7)
        if not shown.empty:
            axis.set_xscale("log")
        axis.set_xlabel(name)
        axis.set_ylabel(metric)
    figure.suptitle(f"{task}: {metric} against cost (classical models have no FLOP count)")
    return _png(figure)


def _pooled(runs: list[RunRecord]) -> tuple[np.ndarray, np.ndarray]:
    targets = np.concatenate([r.predictions["target"].to_numpy() for r in runs])
    outputs = np.concatenate([r.outputs() for r in runs])
    return targets, outputs


def _grid(n: int, width: float = 3.2, height: float = 3.0):
    plt = _plt()
    columns = min(4, n)
    rows = math.ceil(n / columns)
    size = (width * columns, height * rows)
    figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False)
    for axis in axes.flat[n:]:
        axis.axis("off")
    return figure, axes.flat


def calibration_curves(groups: dict[str, list[RunRecord]], task: str) -> bytes | None:
    """Per row: reliability (accuracy per confidence bin, bins of >= 3 subjects), or predicted
    against observed for a regression."""
    kind = next(iter(groups.values()))[0].kind
    figure, axes = _grid(len(groups), 3.0, 2.8)
    edges = np.linspace(0, 1, 11)
    for axis, (label, runs) in zip(axes, groups.items(), strict=False):
        targets, outputs = _pooled(runs)
        if kind == "classification":
            confidence = outputs.max(axis=1)
            correct = outputs.argmax(axis=1) == targets
            which = np.minimum(np.digitize(confidence, edges) - 1, 9)
            kept = [b for b in range(10) if (which == b).sum() >= 3]
            axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
            axis.plot(
                [confidence[which == b].mean() for b in kept],
                [correct[which == b].mean() for b in kept],
                marker="o",
                markersize=3,
            )
            axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        else:
            axis.scatter(targets, outputs, s=5, alpha=0.6)
            low = float(min(targets.min(), outputs.min()))
            high = float(max(targets.max(), outputs.max()))
            axis.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1)
            axis.set(xlabel="observed", ylabel="predicted")
        axis.set_title(label, fontsize=8)
        axis.tick_params(labelsize=6)
    what = "accuracy per confidence bin" if kind == "classification" else "predicted vs observed"
    figure.suptitle(f"{task}: {what}; test subjects, seeds pooled")
    figure.tight_layout()
    return _png(figure)


def confusion_matrices(groups: dict[str, list[RunRecord]], task: str) -> bytes | None:
    first = next(iter(groups.values()))[0]
    if first.kind != "classification":
        return None
    classes = first.classes
    figure, axes = _grid(len(groups))
    for axis, (label, runs) in zip(axes, groups.items(), strict=False):
        targets, outputs = _pooled(runs)
        matrix = np.zeros((len(classes), len(classes)))
        np.add.at(matrix, (targets.astype(int), outputs.argmax(axis=1)), 1)
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        axis.imshow(shares, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(classes)):
            for j in range(len(classes)):
                axis.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8,
                          color="white" if shares[i, j] > 0.6 else "black")  # fmt: skip
        axis.set_xticks(range(len(classes)), classes, fontsize=7)
        axis.set_yticks(range(len(classes)), classes, fontsize=7)
        axis.set_title(label, fontsize=8)
    figure.suptitle(f"{task}: confusion matrices (rows: truth, columns: predicted; seeds pooled)")
    figure.tight_layout()
    return _png(figure)


def hardest_subjects(groups: dict[str, list[RunRecord]], top: int = 10) -> pd.DataFrame:
    """Test subjects misclassified by the most rows (first seed of each row)."""
    import pandas as pd

    counts: dict[str, list] = {}
    for label, runs in groups.items():
        run = min(runs, key=lambda r: r.seed)
        if run.kind != "classification":
            return pd.DataFrame()
        predicted = run.outputs().argmax(axis=1)
        for subject, target, guess in zip(
            run.predictions.index, run.predictions["target"], predicted, strict=True
        ):
            entry = counts.setdefault(subject, [run.classes[int(target)], 0, []])
            if int(target) != int(guess):
                entry[1] += 1
                entry[2].append(label)
    rows = [
        {"subject": s, "truth": t, "misclassified_by": n, "rows": ", ".join(labels)}
        for s, (t, n, labels) in counts.items()
        if n
    ]
    frame = pd.DataFrame(rows, columns=["subject", "truth", "misclassified_by", "rows"])
    return frame.sort_values(["misclassified_by", "subject"], ascending=[False, True]).head(top)


def explain_figures(groups: dict[str, list[RunRecord]]) -> list[tuple[bytes, str, str]]:
    """The PNGs of the runs' ``explain/`` folders (first seed of each row): (data, caption, name)."""
    figures = []
    for label, runs in groups.items():
        run = min(runs, key=lambda r: r.seed)
        for path in sorted((run.folder / "explain").glob("*.png")):
            if len(figures) >= MAX_EXPLAIN_FIGURES:
                return figures
            caption = f"{label} ({run.name}): {path.name}"
            figures.append((path.read_bytes(), caption, f"explain-{run.name}-{path.stem}"))
    return figures


def _file_name(number: int, name: str) -> str:
    """``07-calibration-diagnosis.png``: numbered in page order, safe on every file system."""
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", name).strip("-.")[:80] or "figure"
    return f"{number:02d}-{slug}.png"


# ----------------------------------------------------------------------------- the page
def render(
    plan,
    board: pd.DataFrame,
    patterns: pd.DataFrame,
    fractions: pd.DataFrame,
    comparisons: pd.DataFrame,
    claims: pd.DataFrame,
    records: list[RunRecord],
    jobs: pd.DataFrame,
    skipped: dict[str, str],
    dataset: str,
    figures: dict[str, bytes] | None = None,
) -> str:
    """The page; ``figures`` (when given) receives every figure shown, file name -> PNG bytes."""
    saved = {} if figures is None else figures

    def show(data: bytes, caption: str, name: str) -> str:
        saved[_file_name(len(saved) + 1, name)] = data
        return _figure(_img(data, caption), caption)

    parts = [
        f"<h1>adfuse benchmark: {esc(plan.name)}</h1>",
        f'<p class="note">{esc(plan.description)}</p>' if plan.description else "",
        f"<p>Dataset <code>{esc(dataset)}</code>; tasks {esc(', '.join(sorted(board['task'].unique())) if not board.empty else '-')}; "
        f"seeds {esc(' '.join(map(str, plan.seeds)))}; preset {esc(plan.preset)}; "
        f"{len(records)} finished runs.</p>",
    ]
    if skipped:
        parts.append(
            "<p>Left out: "
            + "; ".join(f"{esc(model)} ({esc(why)})" for model, why in skipped.items())
            + "</p>"
        )
    failed = jobs[jobs["status"] == "failed"] if not jobs.empty else jobs
    parts.append("<h2>Leaderboard</h2>")
    parts.append(
        '<p class="note">Mean across seeds and 95% CI (t-interval; with one seed, the run\'s '
        "bootstrap CI over test subjects). The oracle row is the Bayes-optimal score from the "
        "synthetic cohort's latent severity on the same test subjects; gap = oracle - model. "
        "Energy is an estimate (see each run's efficiency.json).</p>"
    )
    for (task, fraction), part in board.groupby(["task", "fraction"], sort=False):
        kind = "regression" if "rmse" in part and part["rmse"].notna().any() else "classification"
        metrics = (
            ["balanced_accuracy", "auc"] if kind == "classification" else ["rmse", "mae", "r2"]
        )
        part = part.assign(
            **{
                m: [_with_ci(r[m], r[m + "_low"], r[m + "_high"]) for _, r in part.iterrows()]
                for m in metrics
            }
        )
        columns = ["label", "n_seeds", *metrics, "gap_to_oracle", "parameters", "flops_per_subject",
                   "train_seconds", "energy_kwh", "modalities"]  # fmt: skip
        parts.append(f"<h3>{esc(task)}, training fraction {fraction:g}</h3>")
        parts.append(
            _table(part, columns, lambda r: "oracle" if r["label"] == "oracle" else "", digits=3)
        )
    parts.append("<h2>Claims of the papers</h2>")
    if not claims.empty:
        parts.append(
            _table(
                claims,
                ["paper", "claim", "paper_figure", "adfuse_figure", "verdict", "reason", "runs"],
                lambda r: r["verdict"].replace(" ", "-"),
            )
        )
    groups_by_task: dict[str, dict[str, list[RunRecord]]] = {}
    for record in records:
        if record.fraction == max(r.fraction for r in records if r.task == record.task):
            groups_by_task.setdefault(record.task, {}).setdefault(record.label, []).append(record)
    parts.append("<h2>Test-time availability patterns</h2>")
    for task in groups_by_task:
        fraction = max(r.fraction for r in records if r.task == task)
        maps = heat_maps(patterns, task, fraction) if not patterns.empty else []
        for image, caption in maps:
            parts.append(show(image, caption, f"patterns-{caption}"))
    curves = {task: fraction_curves(fractions, task) for task in groups_by_task}
    if any(curves.values()):
        parts.append("<h2>Data-fraction curves</h2>")
        parts += [
            show(c, f"{task}: mean and 95% CI across seeds", f"fractions-{task}")
            for task, c in curves.items()
            if c
        ]
    parts.append("<h2>Score against cost</h2>")
    for task in groups_by_task:
        image = efficiency_scatter(board, task)
        if image:
            caption = f"{task}: FLOPs counted by torch's FlopCounterMode"
            parts.append(show(image, caption, f"cost-{task}"))
    parts.append("<h2>Calibration and confusion</h2>")
    for task, groups in groups_by_task.items():
        for kind, image in (
            ("calibration", calibration_curves(groups, task)),
            ("confusion", confusion_matrices(groups, task)),
        ):
            if image:
                parts.append(show(image, f"{task}: {kind}", f"{kind}-{task}"))
        hardest = hardest_subjects(groups)
        if not hardest.empty:
            parts.append(f"<h3>{esc(task)}: test subjects most often misclassified</h3>")
            parts.append(_table(hardest, list(hardest.columns)))
    if not comparisons.empty:
        parts.append("<h2>Paired comparisons (Holm-corrected)</h2>")
        shown = comparisons.sort_values("p_holm").head(40)
        parts.append(
            _table(
                shown,
                [
                    "task",
                    "fraction",
                    "a",
                    "b",
                    "metric",
                    "difference",
                    "low",
                    "high",
                    "p_value",
                    "p_holm",
                    "better",
                    "n_seeds",
                ],
            )  # fmt: skip
        )
    explained = [f for groups in groups_by_task.values() for f in explain_figures(groups)]
    if explained:
        parts.append("<h2>Interpretability</h2>")
        parts += [show(*figure) for figure in explained[:MAX_EXPLAIN_FIGURES]]
    if not failed.empty:
        parts.append("<h2>Failed jobs</h2>")
        parts.append(_table(failed, ["run", "error"]))
    body = "\n".join(p for p in parts if p)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>adfuse benchmark: {esc(plan.name)}</title><style>{CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
