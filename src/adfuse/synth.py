"""``adfuse.synth``: the synthetic ADNI-like cohort generator (implemented in adfuse.data.synth)."""

from adfuse.data.synth import *  # noqa: F403
from adfuse.data.synth import __all__  # noqa: F401
