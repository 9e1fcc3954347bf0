"""Images and resting-state series of the synthetic cohort, drawn on the Desikan-Killiany atlas.

Every volume is piecewise constant over tissue classes (83 atlas regions, white matter = the
unlabelled voxels inside the closed and filled atlas, a one-voxel CSF rim outside it), times a
smooth bias field, plus Gaussian noise inside the head; the background is 0 (skull-stripped look).

- T1 and FLAIR: a region's grey-matter intensity is proportional to its volume (a VBM-like
  "modulated density"): ``volume = anatomy x (1 - atrophy(s)) x (1 - age loss)``. Atrophy follows
  the configured stages (hippocampus and entorhinal first, frontal last). White matter, CSF and the
  brainstem carry no atrophy, so they serve as intensity references. Lateral ventricles (CSF)
  grow into a periventricular rim with severity and age. FLAIR adds white-matter
  hyperintensities whose load grows with age and severity.
- PET (SUVR-like, smoothed to the configured FWHM): amyloid rises early in its regions, tau
  follows the Braak stages (and needs amyloid), FDG falls in posterior cingulate/parietal/temporal.
- fMRI: a few network signals (AR(1)); regions load on their network, the default-mode loading
  weakens with severity; AR(1) regional noise whose level depends on the site.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import nibabel as nib
import numpy as np
import pandas as pd

from adfuse.data._synth_config import SynthConfig
from adfuse.data._synth_latent import SITES, sigmoid, stream

SIZES: dict[str, int] = {"small": 3, "medium": 2, "paper": 1}  # voxel size in mm
WHITE, CSF, VENTRICLE, PERIVENTRICULAR = 84, 85, 86, 87  # tissue codes after the atlas labels
N_CODES = 88

# Base intensities per tissue (grey-matter cortex, then structures by name).
T1_BASE = {"cortex": 70.0, "hippocampus": 72.0, "amygdala": 72.0, "thalamusproper": 88.0,
           "caudate": 78.0, "putamen": 82.0, "pallidum": 95.0, "accumbensarea": 75.0,
           "brainstem": 100.0, "white": 110.0, "csf": 30.0}  # fmt: skip
FLAIR_BASE = {"cortex": 100.0, "hippocampus": 104.0, "amygdala": 104.0, "thalamusproper": 92.0,
              "caudate": 98.0, "putamen": 96.0, "pallidum": 88.0, "accumbensarea": 98.0,
              "brainstem": 85.0, "white": 80.0, "csf": 15.0}  # fmt: skip
FLAIR_LESION = 150.0
AMYLOID_BASE = {"cortex": 1.02, "hippocampus": 1.0, "amygdala": 1.0, "thalamusproper": 1.15,
                "caudate": 1.05, "putamen": 1.15, "pallidum": 1.2, "accumbensarea": 1.05,
                "brainstem": 1.35, "white": 1.45, "csf": 0.4}  # fmt: skip
TAU_BASE = {
    "cortex": 1.0,
    "hippocampus": 1.0,
    "amygdala": 1.0,
    "thalamusproper": 1.15,
    "caudate": 1.1,
    "putamen": 1.35,
    "pallidum": 1.35,
    "accumbensarea": 1.05,
    "brainstem": 1.0,
    "white": 0.95,
    "csf": 0.5,
}  # fmt: skip  (off-target basal ganglia)
FDG_BASE = {"cortex": 1.3, "hippocampus": 1.0, "amygdala": 1.0, "thalamusproper": 1.35,
            "caudate": 1.2, "putamen": 1.4, "pallidum": 1.1, "accumbensarea": 1.2,
            "brainstem": 1.0, "white": 0.7, "csf": 0.2}  # fmt: skip
PET_STEP = {"amyloid": 0.01, "tau": 0.01, "fdg": 0.01}  # SUVR quantisation (int16 x scl_slope)
NETWORKS: dict[str, tuple[str, ...]] = {
    "sensorimotor": ("precentral", "postcentral", "paracentral", "transversetemporal"),
    "visual": ("cuneus", "lingual", "pericalcarine", "lateraloccipital"),
    "salience": ("insula", "caudalanteriorcingulate", "supramarginal", "parsopercularis"),
    "frontoparietal": ("rostralmiddlefrontal", "caudalmiddlefrontal", "superiorparietal",
                       "parstriangularis"),
    "subcortical": ("thalamusproper", "caudate", "putamen", "pallidum", "accumbensarea"),
}  # fmt: skip


@dataclass(frozen=True)
class AtlasGrid:
    """The atlas at one resolution and what the renderer derives from it (computed once)."""

    voxel_mm: int
    labels: np.ndarray  # int16, 3D
    affine: np.ndarray
    table: pd.DataFrame  # index, name, hemisphere, structure
    image_bytes: bytes  # the atlas file as shipped
    table_bytes: bytes
    head: np.ndarray  # flat indices of head voxels (brain + CSF rim)
    code: np.ndarray  # tissue code of each head voxel (1..83, WHITE, CSF, VENTRICLE, ...)
    white: np.ndarray  # positions in `head` of white-matter voxels
    white_depth: np.ndarray  # log-weight of a lesion at each white-matter voxel (deep > shallow)
    base_names: tuple[str, ...]  # per code 0..85: region name without hemisphere, or tissue

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.labels.shape

    @property
    def names(self) -> list[str]:
        return self.table["name"].tolist()

    def codes_of(self, regions: tuple[str, ...]) -> np.ndarray:
        """Codes whose base name is in regions; ``*cortex`` means every cortical region."""
        wanted = set(regions)
        if "*cortex" in wanted:
            wanted |= {self.base_names[c] for c in self.cortex_codes}
        return np.asarray([c for c in range(1, 84) if self.base_names[c] in wanted], dtype=int)

    @property
    def cortex_codes(self) -> np.ndarray:
        cortex = self.table["structure"].to_numpy() == "cortex"
        return self.table["index"].to_numpy()[cortex]

    def tissue_values(self, base: dict[str, float]) -> np.ndarray:
        """Value per tissue code from a {cortex, <structure>, white, csf} table."""
        values = np.zeros(N_CODES)
        for code in range(1, 84):
            values[code] = base.get(self.base_names[code], base["cortex"])
        values[[WHITE, PERIVENTRICULAR]] = base["white"]
        values[[CSF, VENTRICLE]] = base["csf"]
        return values


def _resource(name: str) -> bytes:
    return resources.files("adfuse.data").joinpath("resources", name).read_bytes()


@lru_cache(maxsize=3)
def load_atlas(size: str) -> AtlasGrid:
    """The packaged atlas at size small (3 mm), medium (2 mm) or paper (1 mm), with its masks."""
    from scipy import ndimage

    mm = SIZES[size]
    image_bytes = _resource(f"atlas-dk_res-{mm}mm_dseg.nii.gz")
    table_bytes = _resource("atlas-dk_dseg.tsv")
    image = nib.Nifti1Image.from_bytes(gzip.decompress(image_bytes))
    labels = np.asarray(image.dataobj).astype(np.int16)
    table = pd.read_csv(io.BytesIO(table_bytes), sep="\t")

    # White matter: close the grey-matter shell (radius ~6 mm), fill holes in 3D and per axial
    # slice (the atlas shell is open below the deep white matter).
    structure = ndimage.generate_binary_structure(3, 1)
    radius = max(1, round(6 / mm))
    pad = radius + 1
    grey = np.pad(labels > 0, pad)
    closed = ndimage.binary_closing(grey, ndimage.iterate_structure(structure, radius))
    brain = ndimage.binary_fill_holes(closed)[pad:-pad, pad:-pad, pad:-pad] | (labels > 0)
    for z in range(brain.shape[2]):
        brain[:, :, z] = ndimage.binary_fill_holes(brain[:, :, z])
    rim = ndimage.binary_dilation(brain, structure, iterations=max(1, round(3 / mm))) & ~brain
    code = np.where(labels > 0, labels, np.where(brain, WHITE, np.where(rim, CSF, 0)))
    ventricles = _ventricles(labels, code == WHITE, mm)
    periventricular = ndimage.binary_dilation(
        ventricles, structure, iterations=max(1, round(3 / mm))
    )
    code[periventricular & (code == WHITE)] = PERIVENTRICULAR
    code[ventricles] = VENTRICLE
    head = np.flatnonzero(code.ravel() > 0)
    head_code = code.ravel()[head].astype(np.int16)
    white = np.flatnonzero(head_code == WHITE)
    depth = ndimage.distance_transform_edt(code == WHITE).ravel()[head[white]]
    names = ["background"] + [name.split("-", 1)[-1] for name in table["name"]]
    base_names = tuple(names[:84] + ["white", "csf", "ventricle", "periventricular"])
    return AtlasGrid(
        mm, labels, image.affine, table, image_bytes, table_bytes, head, head_code, white,
        2.0 * np.log(depth), base_names,
    )  # fmt: skip


def _ventricles(labels: np.ndarray, white: np.ndarray, mm: int) -> np.ndarray:
    """Lateral ventricles (about 25 ml): white matter within 8 mm of a caudate, medial to the
    caudates, inside the caudate-thalamus box and at least 3 mm from every other label."""
    from scipy import ndimage

    caudate = (labels == 36) | (labels == 77)
    deep = caudate | (labels == 35) | (labels == 76)  # + thalamus
    xs = np.nonzero(caudate)[0]
    _, ys, zs = np.nonzero(deep)
    box = np.zeros_like(white)
    box[xs.min() : xs.max() + 1, ys.min() : ys.max() + 1, zs.min() : zs.max() + 1] = True
    near_caudate = ndimage.distance_transform_edt(~caudate) * mm <= 8
    other = (labels > 0) & ~caudate
    away = ndimage.distance_transform_edt(~other) * mm >= 3
    return white & box & near_caudate & away


def site_effects(config: SynthConfig, seed: int) -> pd.DataFrame:
    """Per-site scanner effects: MRI intensity scale, noise factor, PET scale, fMRI noise."""
    rng = stream(seed, "sites")
    n = len(SITES)
    return pd.DataFrame(
        {
            "mri_scale": np.exp(config.site_scale_sd * rng.standard_normal(n)),
            "mri_noise": np.exp(config.site_noise_sd * rng.standard_normal(n)),
            "pet_scale": np.exp(0.25 * config.site_scale_sd * rng.standard_normal(n)),
            "fmri_noise": np.exp(config.site_noise_sd * rng.standard_normal(n)),
        },
        index=pd.Index(SITES, name="SITE"),
    )


def _stage_change(atlas: AtlasGrid, stages, severity: float, width: float) -> np.ndarray:
    """Per tissue code, the summed logistic change of the stages that include it."""
    change = np.zeros(N_CODES)
    for stage in stages:
        change[atlas.codes_of(stage.regions)] += stage.amount * sigmoid(
            (severity - stage.onset) / width
        )
    return change


def anatomy(atlas: AtlasGrid, config: SynthConfig, seed: int, subject: int) -> np.ndarray:
    """A subject's regional volume factors (1 = atlas average); shared by every visit."""
    rng = stream(seed, "anatomy", subject)
    factor = np.ones(N_CODES)
    head_size = 0.5 * config.anatomy_sd * rng.standard_normal()
    regional = config.anatomy_sd * rng.standard_normal(84)
    factor[1:84] = np.exp(head_size + regional[1:84])
    factor[83] = 1.0  # brainstem: reference region without variation
    return factor


def volumes(atlas: AtlasGrid, config: SynthConfig, anatomy_factor, severity, age) -> np.ndarray:
    """Regional grey-matter volume factors at one visit (white matter, CSF, brainstem stay 1)."""
    loss = _stage_change(atlas, config.atrophy_stages, severity, config.atrophy_width)
    volume = anatomy_factor * (1.0 - np.clip(loss, 0, 0.9))
    age_loss = 1.0 - config.atrophy_age_per_year * (age - config.age_mean)
    volume[1:83] *= age_loss
    volume[[0, 83, WHITE, CSF, VENTRICLE, PERIVENTRICULAR]] = 1.0
    return volume


def _bias_field(atlas: AtlasGrid, rng, amplitude: float) -> np.ndarray:
    """A smooth multiplicative field, sum of low cosines per axis, at the head voxels."""
    profiles = []
    for length in atlas.shape:
        x = np.linspace(0, np.pi, length)
        c = rng.normal(0, amplitude / 2, size=2)
        profiles.append(c[0] * np.cos(x) + c[1] * np.cos(2 * x))
    field = np.exp(
        profiles[0][:, None, None] + profiles[1][None, :, None] + profiles[2][None, None, :]
    )
    return field.ravel()[atlas.head]


def _volume(atlas: AtlasGrid, head_values: np.ndarray) -> np.ndarray:
    out = np.zeros(atlas.labels.size, dtype=np.float32)
    out[atlas.head] = head_values
    return out.reshape(atlas.shape)


def render_mri(
    kind: str, atlas: AtlasGrid, config: SynthConfig, rng, volume, site, severity, age
) -> np.ndarray:
    """A T1 or FLAIR volume (float32) for one visit."""
    base = atlas.tissue_values(T1_BASE if kind == "t1" else FLAIR_BASE)
    values = base * volume  # grey-matter intensity proportional to regional volume
    enlarged = config.ventricle_growth * sigmoid(
        (severity - config.ventricle_onset) / config.atrophy_width
    ) + 0.01 * (age - config.age_mean)  # ventricles grow into the periventricular rim
    share = float(np.clip(enlarged, 0.0, 1.0))
    values[PERIVENTRICULAR] = (1 - share) * base[WHITE] + share * base[CSF]
    head = values[atlas.code].astype(np.float32)
    if kind == "flair":
        load_ml = config.wmh_base_ml * np.exp(
            config.wmh_age_per_year * (age - config.age_mean) + config.wmh_per_severity * severity
        )
        n_lesion = min(rng.poisson(load_ml * 1000 / atlas.voxel_mm**3), len(atlas.white) // 4)
        if n_lesion:  # deep white matter first: Gumbel top-k on log-weights
            keys = atlas.white_depth + rng.gumbel(size=len(atlas.white))
            chosen = atlas.white[np.argpartition(-keys, n_lesion - 1)[:n_lesion]]
            head[chosen] = FLAIR_LESION
    head *= _bias_field(atlas, rng, config.bias_field_amplitude) * site["mri_scale"]
    noise = config.mri_noise_sd * site["mri_noise"]
    head += noise * rng.standard_normal(len(head), dtype=np.float32)
    return _volume(atlas, np.maximum(head, 0))


def pet_values(
    kind: str, atlas: AtlasGrid, config: SynthConfig, severity: float, amyloid_load: float, rng
) -> np.ndarray:
    """Regional SUVR per tissue code for one PET scan."""
    if kind == "amyloid":
        values = atlas.tissue_values(AMYLOID_BASE)
        regions = config.amyloid_regions
        weight = np.zeros(N_CODES)
        weight[atlas.cortex_codes] = config.amyloid_other_cortex
        weight[atlas.codes_of(regions.regions)] = 1.0
        values += regions.amount * amyloid_load * weight
    elif kind == "tau":
        values = atlas.tissue_values(TAU_BASE)
        values += amyloid_load * _stage_change(atlas, config.tau_stages, severity, config.tau_width)
    else:
        values = atlas.tissue_values(FDG_BASE)
        stage = config.fdg_regions
        loss = _stage_change(atlas, (stage,), severity, config.fdg_width)
        values *= 1.0 - loss
    values[1:84] += config.pet_region_sd * rng.standard_normal(83)
    return values


def render_pet(
    kind: str, atlas: AtlasGrid, config: SynthConfig, rng, values: np.ndarray, site
) -> np.ndarray:
    """A PET volume (float32, SUVR-like), smoothed to the configured resolution."""
    from scipy import ndimage

    head = values[atlas.code].astype(np.float32) * np.float32(site["pet_scale"])
    sigma = config.pet_fwhm_mm / 2.3548 / atlas.voxel_mm
    image = ndimage.gaussian_filter(_volume(atlas, head), sigma, mode="constant")
    flat = image.ravel()
    flat[atlas.head] += config.pet_noise_sd * rng.standard_normal(len(atlas.head), dtype=np.float32)
    mask = np.zeros(flat.size, dtype=bool)
    mask[atlas.head] = True
    flat[~mask] = 0.0
    return np.maximum(image, 0)


def render_fmri(atlas: AtlasGrid, config: SynthConfig, rng, severity: float, site) -> np.ndarray:
    """Resting-state series [time, region] in percent signal change."""
    t = config.fmri_timepoints
    names = list(NETWORKS) + ["default"]
    signals = _ar1(rng, (t, len(names)), config.fmri_network_ar)
    codes = np.arange(1, 84)
    loading = np.zeros((83, len(names)))
    for k, network in enumerate(NETWORKS):
        loading[atlas.codes_of(NETWORKS[network]) - 1, k] = config.network_coupling
    dmn = config.dmn_coupling * (
        1.0 - config.dmn_loss * sigmoid((severity - config.dmn_onset) / 0.5)
    )
    loading[atlas.codes_of(config.dmn_regions) - 1, -1] = dmn
    noise = _ar1(rng, (t, len(codes)), config.fmri_noise_ar) * site["fmri_noise"]
    return (signals @ loading.T + noise).astype(np.float32)


def _ar1(rng, shape: tuple[int, int], phi: float) -> np.ndarray:
    """Unit-variance AR(1) columns."""
    innovations = rng.standard_normal(shape)
    out = np.empty(shape)
    out[0] = innovations[0]
    scale = np.sqrt(1 - phi**2)
    for step in range(1, shape[0]):
        out[step] = phi * out[step - 1] + scale * innovations[step]
    return out


def nifti_bytes(atlas: AtlasGrid, image: np.ndarray, step: float, level: int = 6) -> bytes:
    """A .nii.gz (int16 with scl_slope = step) as bytes; gzip header without time or name."""
    data = np.clip(np.rint(image / step), 0, 32767).astype(np.int16)
    nifti = nib.Nifti1Image(data, atlas.affine)
    nifti.header.set_xyzt_units("mm")
    nifti.header.set_slope_inter(step, 0.0)
    nifti.set_sform(atlas.affine, code=2)
    nifti.set_qform(atlas.affine, code=2)
    return gzip.compress(nifti.to_bytes(), compresslevel=level, mtime=0)


def timeseries_text(atlas: AtlasGrid, series: np.ndarray) -> str:
    """TSV text: header of region names, one row per time point, 2 decimals."""
    rows = ["\t".join(atlas.names)]
    rows.extend("\t".join(f"{value:.2f}" for value in row) for row in series.tolist())
    return "\n".join(rows) + "\n"


def region_means(atlas: AtlasGrid, image: np.ndarray) -> np.ndarray:
    """Mean of an image in each of the 83 regions (for checks and tests)."""
    labels = atlas.labels.ravel()
    sums = np.bincount(labels, weights=image.ravel(), minlength=84)
    counts = np.bincount(labels, minlength=84)
    return sums[1:] / np.maximum(counts[1:], 1)
