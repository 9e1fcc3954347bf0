"""Plain-data configuration shared by the package: the optional per-dataset ``adfuse.toml``.

An ``adfuse.toml`` at a dataset's root maps other file names, column names and value codings onto
the layout of DESIGN.md, so that an export that is not named like ADNIMERGE still reads unchanged::

    [files]
    adnimerge = "tables/my_export.csv"       # paths stay inside the dataset folder

    [adnimerge.columns]                      # ADNIMERGE name = name in the file
    PTID = "subject_id"
    DX_bl = "Class"

    [adnimerge.values.DX_bl]                 # code in the file = ADNIMERGE code
    Control = "CN"
    Impaired = "AD"

    [adnimerge.defaults]                     # a column the file lacks, filled with one value
    VISCODE = "bl"

    [clinical]
    exclude = ["ABETA"]                      # columns never used as clinical features
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from adfuse.data import layout
from adfuse.errors import ConfigError


def absolute_if_local(value: str) -> str:
    """A relative path that exists here becomes absolute, so a run folder that records it works
    from any working directory; anything else (a name, an absent path) is kept as written."""
    path = Path(value).expanduser()
    return str(path.resolve()) if not Path(value).is_absolute() and path.exists() else value


# a model or encoder folder given on the command line or in a config (stored absolute)
LocalPath = Annotated[str, AfterValidator(absolute_if_local)]


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FilesConfig(StrictModel):
    adnimerge: str = layout.ADNIMERGE
    genotypes: str = layout.GENOTYPES
    rawdata: str = layout.RAWDATA
    atlas_image: str = layout.ATLAS_IMAGE
    atlas_table: str = layout.ATLAS_TABLE
    notes: str = layout.NOTES
    freesurfer: str = layout.FREESURFER


class AdnimergeConfig(StrictModel):
    columns: dict[str, str] = Field(default_factory=dict)
    values: dict[str, dict[str, str | int | float]] = Field(default_factory=dict)
    defaults: dict[str, str | int | float] = Field(default_factory=dict)


class ClinicalConfig(StrictModel):
    features: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)


class DatasetConfig(StrictModel):
    files: FilesConfig = Field(default_factory=FilesConfig)
    adnimerge: AdnimergeConfig = Field(default_factory=AdnimergeConfig)
    clinical: ClinicalConfig = Field(default_factory=ClinicalConfig)

    def path(self, root: Path, key: str) -> Path:
        """The file named by ``files.<key>`` under root; a path leaving the folder is refused."""
        relative = getattr(self.files, key)
        resolved = (root / relative).resolve()
        if not resolved.is_relative_to(root.resolve()):
            raise ConfigError(
                f"{layout.CONFIG}: files.{key} = {relative!r} points outside the dataset folder"
            )
        return root / relative


def pydantic_message(error: ValidationError, source: str) -> str:
    """One line from a pydantic error: where, what was expected, what was found."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{where}'"
    return f"{source}: {where}: {first['msg']} (got {first.get('input')!r})"


def load_dataset_config(root: Path) -> DatasetConfig:
    """The dataset's ``adfuse.toml``, or the defaults when there is none."""
    path = root / layout.CONFIG
    if not path.exists():
        return DatasetConfig()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{layout.CONFIG}: not valid TOML ({exc})") from None
    try:
        return DatasetConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(pydantic_message(exc, layout.CONFIG)) from None


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency, or a ConfigError naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ConfigError(
            f"{purpose} needs the '{module}' package: pip install 'adfuse[{extra}]'"
        ) from None
