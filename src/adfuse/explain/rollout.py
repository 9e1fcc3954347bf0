"""R-GenIMA interpretation: which brain regions each gene's text draws on, and how reliably.

1. **Attention rollout** (Abnar & Zuidema 2020) through the language model's layers: per layer the
   head-averaged attention, with the residual path as ``0.5 A + 0.5 I`` (rows renormalised), multiplied
   from the first layer up. Entry (i, j) of the product: how much token i's final state draws on
   input token j. Per subject with T1 and SNPs, the **ROI x gene matrix** averages the rows of a
   gene's text tokens over the columns of each region token (gene tokens -> region tokens).
2. **Per diagnostic stage**: the mean matrix over the subjects of each class of the task.
3. **Bootstrap stability** (R-GenIMA §4.3): ``n_boot`` (1,000) resamples of subjects, computed in
   parallel threads with a progress bar; stability of a pair = mean / (CI97.5 - CI2.5);
   ``pairs.csv`` ranks the pairs per group (all subjects, and each stage).
4. **Enrichment**: Fisher's exact test (one-sided) of the top ``top_genes`` genes by attention against
   the GWAS AD-locus list shipped in ``adfuse/resources/gwas_ad_loci.tsv``; the universe is every
   annotated gene of the dataset.
5. **Attribution** (not in the paper; ``RGenIMA.attribution``): gradient x input of each token
   against genotypes written 0/0 and regions at the cohort's mean RiT token; per gene (region) the
   mean over subjects of |sum over its tokens|. Attention says where information flows, this what
   the prediction depends on.
6. **Planted truth** (synthetic cohorts, ``truth.json``): recall@k of the causal genes and of the
   atrophy regions (all stages, and the earliest stage) among the top-ranked ones, for the
   attention ranking (the paper's), the attribution ranking, and for genes the training-split
   association of each gene's SNP in the text (the data's own univariate answer), beside the
   recall of a random ranking (k / N). With the generator's default effect sizes (0.05-0.12 SD per
   allele) only APOE is detectable in a few hundred subjects, by any method.

Writes, atomically, into the explain folder: ``roi_gene.npy`` ([subjects, regions, genes]),
``subjects.csv``, ``pairs.csv``, ``genes.csv``, ``regions.csv``, ``enrichment.json``,
``planted_truth.json`` (synthetic cohorts), ``roi_gene_heatmap.png`` and
``region_attention_<stage>.png`` (region attention painted on atlas slices).
"""

from __future__ import annotations

import csv
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from adfuse.errors import ConfigError
from adfuse.explain import explainer
from adfuse.explain.attention import _save_array
from adfuse.io import atomic_write_bytes, atomic_write_json, atomic_write_text

GWAS_LIST = "gwas_ad_loci.tsv"
RECALL_K = (5, 10, 20)


# ----------------------------------------------------------------------------- the computations
def attention_rollout(attentions, mask=None, residual: float = 0.5):
    """``attentions``: per layer ``[B, heads, L, L]`` (rows sum to 1) -> rollout ``[B, L, L]``."""
    import torch

    rollout = None
    for layer in attentions:
        weights = layer.float().mean(dim=1)
        eye = torch.eye(weights.shape[-1], device=weights.device)
        weights = residual * eye + (1 - residual) * weights
        weights = weights / weights.sum(dim=-1, keepdim=True)
        rollout = weights if rollout is None else weights @ rollout
    if mask is not None:
        rollout = rollout * (mask[:, :, None] & mask[:, None, :])
    return rollout


def roi_gene_matrix(rollout, region, gene, n_regions: int, n_genes: int):
    """``[B, regions, genes]``: for each gene the mean, over its text tokens, of the rollout mass on
    each region token (NaN for a gene with no token in the sample)."""
    import torch

    to_region = torch.nn.functional.one_hot(region.clamp(min=0), n_regions).float()
    to_region = to_region * (region >= 0)[..., None]  # [B, L, R]
    of_gene = torch.nn.functional.one_hot(gene.clamp(min=0), n_genes).float()
    of_gene = of_gene * (gene >= 0)[..., None]  # [B, L, G]
    counts = of_gene.sum(dim=1)  # [B, G]
    mass = torch.einsum("btj,bjr->btr", rollout, to_region)  # [B, L tokens, R]
    summed = torch.einsum("btr,btg->brg", mass, of_gene)
    matrix = summed / counts.clamp(min=1)[:, None, :]
    return torch.where(counts[:, None, :] > 0, matrix, torch.full_like(matrix, float("nan")))


def bootstrap_stability(values: np.ndarray, n_boot: int = 1000, seed: int = 0, workers=None):
    """``values [n, ...]`` -> mean, CI2.5, CI97.5 and stability = mean / (CI97.5 - CI2.5) of the
    mean over ``n_boot`` resamples of the n rows (threads over chunks; a progress bar)."""
    from tqdm.auto import tqdm

    n = len(values)
    flat = values.reshape(n, -1).astype(np.float64)
    chunks = [min(50, n_boot - start) for start in range(0, n_boot, 50)]

    def chunk(number: int) -> np.ndarray:
        rng = np.random.default_rng([seed, number])
        draws = rng.integers(0, n, size=(chunks[number], n))
        weights = np.stack([np.bincount(row, minlength=n) for row in draws]) / n
        return weights @ flat

    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(
            tqdm(
                pool.map(chunk, range(len(chunks))),
                total=len(chunks),
                desc="bootstrap",
                leave=False,
                disable=n_boot < 200,
            )
        )
    means = np.concatenate(parts)
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    mean = flat.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        stability = np.where(high - low > 0, mean / (high - low), np.inf)
    shape = values.shape[1:]
    return mean.reshape(shape), low.reshape(shape), high.reshape(shape), stability.reshape(shape)


def recall_at_k(ranking: list[str], truth: set[str], k: int) -> float:
    """Share of ``truth`` among the first k of ``ranking``."""
    return len(set(ranking[:k]) & truth) / len(truth) if truth else float("nan")


def enrichment(prioritised: set[str], reference: set[str], universe: set[str]) -> dict:
    """One-sided Fisher's exact test: are the prioritised genes enriched in the reference list?"""
    from scipy.stats import fisher_exact

    prioritised, reference = prioritised & universe, reference & universe
    a = len(prioritised & reference)
    b = len(prioritised - reference)
    c = len(reference - prioritised)
    d = len(universe - prioritised - reference)
    odds, p = fisher_exact([[a, b], [c, d]], alternative="greater")
    return {
        "table": [[a, b], [c, d]],
        "odds_ratio": float(odds),
        "p_value": float(p),
        "prioritised_in_reference": sorted(prioritised & reference),
    }


def gwas_genes() -> set[str]:
    """The shipped GWAS AD-locus gene list (see ``adfuse/resources/README.md``)."""
    from importlib.resources import files

    text = (files("adfuse") / "resources" / GWAS_LIST).read_text(encoding="utf-8")
    rows = [line.split("\t")[0] for line in text.splitlines() if line and not line.startswith("#")]
    return set(rows[1:])


# ----------------------------------------------------------------------------- the explainer
@explainer("rgenima")
def rgenima_rollout(
    session,
    out_dir: Path,
    n_boot: int = 1000,
    batch_size: int = 16,
    top_genes: int = 5,
    seed: int = 0,
    workers: int | None = None,
) -> dict:
    """Rollout, stages, stability, enrichment and planted truth of an R-GenIMA run (see the top)."""
    model = session.model.eval()
    if not (model.image_modality and model.genetic) or model.config.image_encoder != "rit":
        raise ConfigError("rgenima explain: needs a run with T1 through RiT and SNPs")
    regions = list(model.spec[model.image_modality].feature_names)
    genes = list(model.gene_names)
    matrices, ids, labels, gene_attribution, region_attribution = _collect(
        session, model, len(regions), len(genes), batch_size
    )
    if not len(ids):
        raise ConfigError("rgenima explain: no subject has both T1 and SNPs")
    listed = np.flatnonzero(~np.isnan(matrices[0]).all(axis=0))  # genes written in the text
    if not len(listed):
        raise ConfigError("rgenima explain: no SNP passed QC into the text, no gene to rank")
    values = np.nan_to_num(matrices[:, :, listed])
    classes = list(session.task.classes) if session.task.kind == "classification" else []
    names = [classes[int(t)] if classes else "all" for t in labels]
    groups = ["all", *[c for c in classes if c in names]]

    out_dir = Path(out_dir)
    files = [_save_array(out_dir / "roi_gene.npy", matrices.astype(np.float32))]
    _write_csv(out_dir / "subjects.csv", ["id", "group"], zip(ids, names, strict=True))
    files.append("subjects.csv")
    pair_rows, per_group = [], {}
    for group in groups:
        chosen = np.array([group in ("all", name) for name in names])
        mean, low, high, stability = bootstrap_stability(values[chosen], n_boot, seed, workers)
        per_group[group] = mean
        order = np.argsort(-stability, axis=None, kind="stable")
        for rank, flat in enumerate(order, start=1):
            r, g = np.unravel_index(flat, mean.shape)
            pair_rows.append(
                [
                    group,
                    rank,
                    regions[r],
                    genes[listed[g]],
                    int(chosen.sum()),
                    mean[r, g],
                    low[r, g],
                    high[r, g],
                    stability[r, g],
                ]
            )
    header = [
        "group",
        "rank",
        "region",
        "gene",
        "subjects",
        "mean",
        "ci_low",
        "ci_high",
        "stability",
    ]
    _write_csv(out_dir / "pairs.csv", header, pair_rows)
    files.append("pairs.csv")

    overall = per_group["all"]
    gene_score = overall.mean(axis=0)
    gene_ranking = [genes[listed[g]] for g in np.argsort(-gene_score, kind="stable")]
    region_score = overall.mean(axis=1)
    region_ranking = [regions[r] for r in np.argsort(-region_score, kind="stable")]
    gene_effect = np.abs(gene_attribution[:, listed]).mean(axis=0)
    region_effect = np.abs(region_attribution).mean(axis=0)
    association = _association(listed, model)
    _write_csv(
        out_dir / "genes.csv",
        ["rank", "gene", "attention", "attribution", "association"],
        [
            [rank, genes[listed[g]], gene_score[g], gene_effect[g], association[g]]
            for rank, g in enumerate(np.argsort(-gene_score, kind="stable"), start=1)
        ],
    )
    _write_csv(
        out_dir / "regions.csv",
        ["rank", "region", "attribution", *groups],
        [
            [rank, regions[r], region_effect[r], *(per_group[g].mean(axis=1)[r] for g in groups)]
            for rank, r in enumerate(np.argsort(-region_score, kind="stable"), start=1)
        ],
    )
    files += ["genes.csv", "regions.csv"]
    rankings = {
        "attention": {"genes": gene_ranking, "regions": region_ranking},
        "attribution": {
            "genes": [genes[listed[g]] for g in np.argsort(-gene_effect, kind="stable")],
            "regions": [regions[r] for r in np.argsort(-region_effect, kind="stable")],
        },
        "association": {
            "genes": [genes[listed[g]] for g in np.argsort(-association, kind="stable")]
        },
    }

    universe = {g for g in genes if g != "unannotated"}
    enriched = enrichment(set(gene_ranking[:top_genes]), gwas_genes(), universe)
    enriched |= {"top_genes": top_genes, "universe": len(universe), "reference": GWAS_LIST}
    atomic_write_json(out_dir / "enrichment.json", enriched)
    files.append("enrichment.json")

    summary = {
        "model": "rgenima",
        "subjects": len(ids),
        "per_group": {g: int(sum(g in ("all", n) for n in names)) for g in groups},
        "genes_in_text": [genes[g] for g in listed],
        "top_genes": gene_ranking[:top_genes],
        "top_regions": region_ranking[:10],
        "top_genes_attribution": rankings["attribution"]["genes"][:top_genes],
        "top_regions_attribution": rankings["attribution"]["regions"][:10],
        "n_boot": n_boot,
        "enrichment": {k: enriched[k] for k in ("odds_ratio", "p_value", "table")},
        "snp_qc": model.statistics_report().get("snp_qc", {}),
    }
    truth_path = Path(session.cohort.root) / "truth.json"
    if truth_path.exists():
        truth = planted_truth(
            json.loads(truth_path.read_text()), rankings, genes, regions, [genes[g] for g in listed]
        )
        atomic_write_json(out_dir / "planted_truth.json", truth)
        files.append("planted_truth.json")
        summary["planted_truth"] = truth
    files += _figures(out_dir, session, per_group, regions, [genes[g] for g in listed])
    summary["files"] = files
    return summary


def planted_truth(truth: dict, rankings: dict, genes, regions, in_text) -> dict:
    """recall@k of the causal genes and the atrophy regions for each ranking (``rankings[name]``
    holds a "genes" and/or a "regions" list, best first), beside a random ranking's k / N."""
    causal = {row["gene"] for row in truth["genetics"]["causal_snps"]} & set(genes)
    stages = truth["regions"]["atrophy_stages"]
    affected = {r for stage in stages for r in stage["regions"]} & set(regions)
    earliest = set(stages[0]["regions"]) & set(regions)
    n_genes = len([g for g in genes if g != "unannotated"])

    def table(ranking, items: set[str], n_candidates: int) -> dict:
        ks = sorted({k for k in (*RECALL_K, len(items)) if k <= len(ranking)})
        return {
            f"recall@{k}": {
                "model": recall_at_k(ranking, items, k),
                "random": min(k, n_candidates) / n_candidates,
            }
            for k in ks
        } | {"n_truth": len(items), "n_candidates": n_candidates}

    def tables(kind: str, items: set[str], n_candidates: int) -> dict:
        return {
            name: table(ranked[kind], items, n_candidates)
            for name, ranked in rankings.items()
            if kind in ranked
        }

    text_choice = len(causal & set(in_text)) / len(causal) if causal else float("nan")
    return {
        "causal_genes": sorted(causal),
        "genes": tables("genes", causal, n_genes),
        "genes_chosen_for_text": {
            "recall": text_choice,
            "random": len(in_text) / n_genes,
            "note": "genes without a QC-passing SNP, or beyond the text budget (SNPs kept by "
            "training-split association), are not in the text and rank last",
        },
        "regions_affected": tables("regions", affected, len(regions)),
        "regions_earliest": tables("regions", earliest, len(regions)),
    }


def _association(listed, model) -> np.ndarray:
    """Per gene in the text: the training-split -log10 p of its strongest SNP in the text (the
    data's own univariate answer, a reference for the model's rankings)."""
    scores = model.snp_score.numpy()
    keep = model.snp_keep.numpy()
    return np.array(
        [max((scores[i] for i in model.members[g] if keep[i]), default=0.0) for g in listed]
    )


def token_sums(values, index, n: int):
    """``values [B, L]`` summed per index ``[B, L]`` (-1: none) -> ``[B, n]``."""
    import torch

    one_hot = torch.nn.functional.one_hot(index.clamp(min=0), n).to(values.dtype)
    return torch.einsum("bl,bln->bn", values * (index >= 0), one_hot)


def _collect(session, model, n_regions: int, n_genes: int, batch_size: int):
    """Per labelled subject (train, val, test) with T1 and SNPs: the ROI x gene rollout matrix
    and the attribution of each gene's and region's tokens (``RGenIMA.attribution``, against
    genotypes 0/0 and the cohort's mean RiT token per region)."""
    import torch

    device = next(model.parameters()).device
    batches = []
    for dataset in (session.train, session.val, session.test):
        columns = [dataset.modalities.index(m) for m in (model.image_modality, "genotype")]
        both = np.flatnonzero(dataset.available[:, columns].all(axis=1))
        batches += [
            (dataset, both[start : start + batch_size].tolist())
            for start in range(0, len(both), batch_size)
        ]
    if not batches:
        empty = np.zeros((0, n_regions, n_genes))
        return empty, [], [], np.zeros((0, n_genes)), np.zeros((0, n_regions))
    with torch.no_grad():
        total = 0.0
        for dataset, rows in batches:
            tokens, _ = model.image_tokens(dataset.batch(rows).to(device))
            total = total + tokens.sum(dim=0)
        baseline = total / sum(len(rows) for _, rows in batches)
    matrices, ids, labels, gene_parts, region_parts = [], [], [], [], []
    for dataset, rows in batches:
        batch = dataset.batch(rows).to(device)
        layout = model.attention_layout(batch)
        rollout = attention_rollout(layout["attentions"], layout["mask"])
        matrix = roi_gene_matrix(rollout, layout["region"], layout["gene"], n_regions, n_genes)
        matrices.append(matrix.cpu().numpy())
        attributed = model.attribution(batch, baseline)
        contribution = attributed["contribution"]
        gene_parts.append(token_sums(contribution, attributed["gene"], n_genes).cpu().numpy())
        region_parts.append(token_sums(contribution, attributed["region"], n_regions).cpu().numpy())
        ids += batch.ids
        labels.append(batch.target.cpu())
    return (
        np.concatenate(matrices),
        ids,
        torch.cat(labels).numpy(),
        np.concatenate(gene_parts),
        np.concatenate(region_parts),
    )


def _write_csv(path: Path, header: list[str], rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float | np.floating) else v for v in row])
    atomic_write_text(path, buffer.getvalue())


def _figures(out_dir: Path, session, per_group: dict, regions, genes) -> list[str]:
    """The ROI x gene heat map (all subjects) and per group the region attention on atlas slices."""
    from matplotlib.figure import Figure

    files = []
    overall = per_group["all"]
    top = np.argsort(-overall.mean(axis=1), kind="stable")[:30]
    figure = Figure(figsize=(4 + 0.35 * len(genes), 2 + 0.22 * len(top)), layout="constrained")
    axis = figure.subplots()
    shown = axis.imshow(overall[top], aspect="auto", cmap="viridis")
    axis.set_xticks(range(len(genes)), genes, rotation=90, fontsize=7)
    axis.set_yticks(range(len(top)), [regions[r] for r in top], fontsize=7)
    axis.set_title("rollout: gene -> region\n(top 30 regions)", fontsize=9)
    figure.colorbar(shown, ax=axis, label="mean rollout mass")
    files.append(_save_figure(figure, out_dir / "roi_gene_heatmap.png"))

    atlas = session.cohort.atlas
    labels = atlas.labels()
    lookup = np.full(int(labels.max()) + 1, np.nan)
    for group, matrix in per_group.items():
        lookup[:] = np.nan
        score = matrix.mean(axis=1)
        for index, value in zip(atlas.indices, score, strict=True):
            lookup[index] = value
        painted = lookup[labels]
        # per axis the slice with the most labelled voxels (the mid-sagittal plane has few)
        middle = [
            int(np.argmax((labels > 0).sum(axis=tuple(a for a in range(3) if a != dim))))
            for dim in range(3)
        ]
        figure = Figure(figsize=(12, 4), layout="constrained")
        panels = figure.subplots(1, 3)
        cuts = {
            "sagittal": painted[middle[0]],
            "coronal": painted[:, middle[1]],
            "axial": painted[:, :, middle[2]],
        }
        for panel, (name, plane) in zip(panels, cuts.items(), strict=True):
            panel.set_axis_off()
            shown = panel.imshow(
                plane.T, origin="lower", cmap="magma", vmin=np.nanmin(score), vmax=np.nanmax(score)
            )
            panel.set_title(f"{group}: {name}")
        figure.colorbar(shown, ax=panels, shrink=0.8, label="gene -> region attention")
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", group)
        files.append(_save_figure(figure, out_dir / f"region_attention_{safe}.png"))
    return files


def _save_figure(figure, path: Path) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return path.name
