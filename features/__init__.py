"""The one definition of every feature, shared by training and serving."""

from features.hits import HIT_FEATURES
from features.session import SESSION_FEATURES

IN_SESSION_FEATURES: tuple[str, ...] = SESSION_FEATURES + HIT_FEATURES

__all__ = ["HIT_FEATURES", "IN_SESSION_FEATURES", "SESSION_FEATURES"]
