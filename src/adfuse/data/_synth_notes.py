"""Short clinical notes whose wording tracks severity, never naming the diagnosis.

Each symptom has an onset on the severity scale; at a visit it is mentioned with probability
``sigmoid((s - onset) / 0.35)`` (a few spurious mentions below onset), in one of several wordings
with random informants and objects. Reassuring statements become likely at low severity; filler
sentences (sleep, mood, blood pressure...) and sometimes the MMSE score are added; the order of
sentences is shuffled. Diagnosis words (``BANNED_WORDS``) never appear.
"""

from __future__ import annotations

import re

import numpy as np

from adfuse.data._synth_latent import sigmoid

BANNED_WORDS = re.compile(
    r"alzheimer|dementia|demented|\bmci\b|\bemci\b|\blmci\b|mild cognitive impairment|"
    r"cognitively normal|\bad\b|\bcn\b|\bsmc\b",
    re.IGNORECASE,
)

INFORMANTS = ("wife", "husband", "daughter", "son", "partner", "sister", "friend", "caregiver")
OBJECTS = ("keys", "glasses", "wallet", "phone", "purse", "remote control", "checkbook")
SYMPTOMS: tuple[tuple[float, tuple[str, ...]], ...] = (
    (
        -0.7,
        (
            "Reports that recalling names has become harder.",
            "Worried that memory is not as sharp as a few years ago.",
            "Describes occasional forgetfulness of recent conversations.",
            "Feels slower to remember where things were put.",
        ),
    ),
    (
        -0.1,
        (
            "Misplaces {object} more often than before.",
            "Often has to search for {object}.",
            "Has lost {object} several times this year.",
        ),
    ),
    (
        0.3,
        (
            "Per {informant}, repeats the same questions within the hour.",
            "{Informant} reports the same stories being retold.",
            "Asks repeatedly about plans already discussed, per {informant}.",
        ),
    ),
    (
        0.4,
        (
            "Word-finding pauses noted during the interview.",
            "Some trouble finding the right word; uses circumlocution.",
            "Occasional tip-of-the-tongue episodes in conversation.",
        ),
    ),
    (
        0.6,
        (
            "Relies on lists and a calendar to keep appointments.",
            "Missed two appointments in recent months.",
            "Uses sticky notes around the house as reminders.",
        ),
    ),
    (
        1.0,
        (
            "{Informant} has taken over paying the bills.",
            "Needs help with finances; errors with the checkbook.",
            "No longer manages the household budget, per {informant}.",
        ),
    ),
    (
        1.1,
        (
            "Needs reminders to take medications.",
            "Medication errors reported; a pill organizer was set up.",
            "{Informant} now supervises the medications.",
        ),
    ),
    (
        1.3,
        (
            "Got lost driving to a familiar place.",
            "Became disoriented in a store parking lot.",
            "Has stopped driving after getting lost, per {informant}.",
        ),
    ),
    (
        1.8,
        (
            "Unsure of the date and the day of the week today.",
            "Disoriented to time during the visit.",
            "Could not name the current month.",
        ),
    ),
    (
        2.0,
        (
            "More withdrawn and apathetic, per {informant}.",
            "Irritable in the evenings, {informant} says.",
            "Less interested in hobbies than before.",
        ),
    ),
    (
        2.3,
        (
            "Needs help choosing clothes and dressing.",
            "Requires supervision for bathing.",
            "Can no longer prepare meals without help.",
        ),
    ),
)
REASSURING = (
    "Denies memory problems.",
    "No cognitive complaints today.",
    "Independent in all daily activities.",
    "Manages own finances and medications.",
    "Drives without difficulty.",
    "Still works part time without problems.",
    "Keeps a busy social calendar without difficulty.",
)
FILLER = (
    "Blood pressure well controlled.",
    "Sleeping well.",
    "Walks most days.",
    "Mood stable.",
    "Mild arthritis in the knees.",
    "Hearing aids in place.",
    "Cholesterol on treatment.",
    "Enjoys gardening and reading.",
    "Appetite good, weight stable.",
    "Reports some trouble sleeping.",
    "Vision corrected with glasses.",
    "No falls since last visit.",
)
OPENERS = (
    "Seen today with {informant}.",
    "Comes alone today.",
    "Accompanied by {informant}.",
    "Visit at month {month}.",
    "Routine study visit.",
)
MMSE_PHRASES = ("MMSE {mmse}/30.", "Scored {mmse} on the MMSE.", "MMSE today: {mmse}.")


def write_note(rng: np.random.Generator, severity: float, month: int, mmse: float | None) -> str:
    """One visit's note."""
    informant = INFORMANTS[rng.integers(len(INFORMANTS))]
    fields = {
        "informant": informant,
        "Informant": informant.capitalize(),
        "object": OBJECTS[rng.integers(len(OBJECTS))],
        "month": month,
    }
    sentences = []
    for onset, phrases in SYMPTOMS:
        if rng.random() < 0.02 + 0.88 * sigmoid((severity - onset) / 0.35):
            sentences.append(phrases[rng.integers(len(phrases))])
    n_reassuring = rng.binomial(2, float(sigmoid((-0.5 - severity) / 0.35)))
    sentences += list(rng.choice(REASSURING, size=n_reassuring, replace=False))
    sentences += list(rng.choice(FILLER, size=rng.integers(1, 4), replace=False))
    if mmse is not None and rng.random() < 0.3:
        phrase = MMSE_PHRASES[rng.integers(len(MMSE_PHRASES))]
        sentences.append(phrase.replace("{mmse}", str(int(mmse))))
    order = rng.permutation(len(sentences))
    opener = OPENERS[rng.integers(len(OPENERS))]
    text = " ".join([opener] + [sentences[i] for i in order])
    for key, value in fields.items():
        text = text.replace("{" + key + "}", str(value))
    return text
