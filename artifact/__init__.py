"""The model artifact: the pickled model, its card, and their loader."""

from artifact.model import ConversionModel, FeatureMismatchError
from artifact.store import (
    ArtifactError,
    PinnedDigestError,
    check_pin,
    load_model,
    read_card,
    save_model,
)

__all__ = [
    "ArtifactError",
    "ConversionModel",
    "FeatureMismatchError",
    "PinnedDigestError",
    "check_pin",
    "load_model",
    "read_card",
    "save_model",
]
