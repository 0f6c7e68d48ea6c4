"""The phantoms' tissue classes, background first (a label's value is its index): the default of every model,
cohort and drawing. Torch-free, so the server, the drawings and the score command name them without loading
torch. A cohort may name its own (``split.json``'s ``"classes"``, :func:`mixdemo.data.cohort_classes`), and the
served S's are its training record's (:func:`mixdemo.server.model_classes`)."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = ("background", "GM", "WM", "CSF")
NUM_CLASSES = len(CLASS_NAMES)
