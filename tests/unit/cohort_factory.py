"""Small hand-made ADNIMERGE.csv datasets, written to a folder and read back with load_cohort.

``hand_made_cohort`` has 19 subjects chosen so that every task's answer is known (see the comments
on each subject); ``sized_cohort`` builds a cohort with a chosen number of subjects per baseline DX,
for splits.
"""

from __future__ import annotations

import csv
from pathlib import Path

import adfuse

COLUMNS = (
    "RID",
    "PTID",
    "VISCODE",
    "EXAMDATE",
    "DX_bl",
    "DX",
    "AGE",
    "PTGENDER",
    "PTEDUCAT",
    "APOE4",
    "MMSE",
    "CDRSB",
    "ADAS13",
    "Month",
)
DX_OF_DX_BL = {"CN": "CN", "SMC": "CN", "EMCI": "MCI", "LMCI": "MCI", "AD": "Dementia"}
BL_OF_DX = {"CN": "CN", "MCI": "LMCI", "AD": "AD", "Dementia": "AD"}

# One subject per line: PTID DX_bl AGE PTGENDER, then its visits as VISCODE:DX:CDRSB ("-" = blank).
HAND_MADE = """
# CN at baseline
002_S_0001  CN    70.0  Female  bl:CN:0    m12:CN:0     m24:CN:0.5
002_S_0002  SMC   68.0  Male    bl:CN:0    m24:CN:0
002_S_0003  CN    75.5  Female  bl:CN:0    m12:CN:0                    # no m24 visit
002_S_0004  SMC   66.0  Male    bl:CN:0.5  m24:CN:-                    # no CDR-SB at m24
002_S_0005  CN    80.0  Female  bl:CN:-    m24:CN:0                    # no CDR-SB at bl
002_S_0031  CN    71.0  Male    m06:CN:0   m24:CN:0.5                  # no bl visit
# MCI at baseline
003_S_0010  LMCI  73.0  Male    bl:MCI:1.5  m12:MCI:2    m24:Dementia:4    # pMCI
003_S_0011  EMCI  69.0  Female  bl:MCI:1    m36:Dementia:3.5               # pMCI at m36
003_S_0012  EMCI  72.0  Male    bl:MCI:0.5  m12:MCI:1    m24:MCI:1  m36:MCI:1.5  # sMCI
003_S_0013  LMCI  77.0  Female  bl:MCI:2    m24:MCI:2.5  m48:MCI:3         # sMCI (DX at m48)
003_S_0014  LMCI  74.0  Male    bl:MCI:1.5  m12:MCI:1.5  m24:MCI:2         # too short
003_S_0015  EMCI  65.0  Female  bl:MCI:1    m24:MCI:1.5  m48:Dementia:5    # sMCI (late)
003_S_0016  LMCI  78.0  Male    bl:MCI:1    m24:MCI:1    m36:-:1.5         # no DX >= m36
003_S_0017  EMCI  67.0  Female  bl:MCI:0.5  m12:CN:0     m36:CN:0          # sMCI (reverts)
003_S_0018  LMCI  79.0  Male    bl:MCI:2    m06:Dementia:3                 # pMCI, short
# AD at baseline
004_S_0020  AD    76.0  Female  bl:Dementia:4.5  m24:Dementia:7
004_S_0021  AD    81.0  Male    bl:Dementia:5    m12:Dementia:6
004_S_0022  AD    72.5  Female  bl:Dementia:6    m24:Dementia:9.5
# no DX at the baseline visit (DX_bl is known)
005_S_0030  LMCI  70.0  Male    bl:-:1      m12:MCI:1.5
"""


def parse_hand_made(text: str = HAND_MADE) -> list[tuple]:
    """(PTID, DX_bl, AGE, PTGENDER, [(VISCODE, DX, CDRSB), ...]) per subject line."""
    subjects = []
    for line in text.splitlines():
        fields = line.split("#")[0].split()
        if not fields:
            continue
        ptid, dx_bl, age, sex, *visits = fields
        parsed = []
        for visit in visits:
            viscode, dx, cdrsb = visit.split(":")
            parsed.append(
                (viscode, None if dx == "-" else dx, None if cdrsb == "-" else float(cdrsb))
            )
        subjects.append((ptid, dx_bl, float(age), sex, parsed))
    return subjects


def write_adnimerge(folder: Path, rows: list[dict]) -> Path:
    """Write ADNIMERGE.csv (blank for None) into ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "ADNIMERGE.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return folder


def subject_rows(rid: int, ptid: str, dx_bl: str, age: float, sex: str, visits) -> list[dict]:
    """ADNIMERGE rows of one subject; scores other than CDR-SB are plausible fillers."""
    rows = []
    for viscode, dx, cdrsb in visits:
        month = 0 if viscode == "bl" else int(viscode[1:])
        rows.append(
            {
                "RID": rid,
                "PTID": ptid,
                "VISCODE": viscode,
                "EXAMDATE": f"{2010 + month // 12}-{1 + month % 12:02d}-15",
                "DX_bl": dx_bl,
                "DX": dx,
                "AGE": age,
                "PTGENDER": sex,
                "PTEDUCAT": 16,
                "APOE4": rid % 3,
                "MMSE": 29 if dx == "CN" else 25 if dx == "MCI" else 20,
                "CDRSB": cdrsb,
                "ADAS13": 10.0 + 2 * (cdrsb or 0.0),
                "Month": month,
            }
        )
    return rows


def hand_made_cohort(folder: Path):
    """The 19 subjects of HAND_MADE, loaded as a Cohort."""
    rows = []
    for rid, (ptid, dx_bl, age, sex, visits) in enumerate(parse_hand_made(), start=1):
        rows += subject_rows(rid, ptid, dx_bl, age, sex, visits)
    return adfuse.load_cohort(write_adnimerge(Path(folder), rows))


def sized_cohort(folder: Path, counts: dict[str, int]):
    """``counts[DX]`` subjects per baseline DX (CN, MCI, AD), each with a bl and an m24 visit.

    Ages, sexes and CDR-SB vary with the subject's number so that no two subjects are alike.
    """
    rows = []
    rid = 0
    for dx, count in counts.items():
        for _ in range(count):
            rid += 1
            ptid = f"{100 + rid % 7:03d}_S_{rid:04d}"
            base = {"CN": 0.0, "MCI": 1.5, "AD": 4.5}[dx] + (rid % 4) * 0.5
            visits = [
                ("bl", DX_OF_DX_BL[BL_OF_DX[dx]], base),
                ("m24", DX_OF_DX_BL[BL_OF_DX[dx]], base + (rid % 5) * 0.5),
            ]
            age = 60.0 + (rid * 7) % 25
            sex = "Female" if rid % 3 else "Male"
            rows += subject_rows(rid, ptid, BL_OF_DX[dx], age, sex, visits)
    return adfuse.load_cohort(write_adnimerge(Path(folder), rows))
