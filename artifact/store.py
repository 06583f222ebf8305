"""Saving and loading the model artifact with its model card."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path
from typing import Any

from artifact.model import ConversionModel

MODEL_FILE = "Pickled_model.pkl"
CARD_FILE = "model_card.json"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ArtifactError(RuntimeError):
    """The model file or its card is missing, altered or unusable."""


class PinnedDigestError(ArtifactError):
    """The model file's SHA-256 is not the digest pinned for this deployment."""


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_path(model_path: Path) -> Path:
    """Return where the card of a model file lives."""
    return model_path.with_name(CARD_FILE)


def save_model(model: ConversionModel, out_dir: Path, card: dict[str, Any]) -> dict[str, Any]:
    """Pickle the model into out_dir and write its card with the file's SHA-256."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILE
    tmp = model_path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(model, fh, protocol=pickle.HIGHEST_PROTOCOL)
    full_card = dict(card)
    full_card["version"] = model.version
    full_card["artifact_sha256"] = sha256_of(tmp)
    card_tmp = card_path(model_path).with_suffix(".tmp")
    card_tmp.write_text(json.dumps(full_card, indent=2, sort_keys=False) + "\n")
    # The card goes first: a reader that sees the new pickle always finds its card.
    card_tmp.replace(card_path(model_path))
    tmp.replace(model_path)
    return full_card


def read_card(model_path: Path) -> dict[str, Any]:
    """Read the model card that sits beside a model file."""
    path = card_path(model_path)
    try:
        card: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"no model card at {path}; retrain or restore it") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"model card {path} is not valid JSON: {exc}") from None
    return card


def check_pin(pin: str) -> str:
    """Return a pinned digest as lowercase hex; refuse anything that is not a SHA-256."""
    digest = pin.strip().lower()
    if not SHA256_HEX.fullmatch(digest):
        raise ArtifactError("the pinned digest (SCORER_MODEL_SHA256) is not 64 hex digits")
    return digest


def load_model(
    model_path: Path | str, *, threads: int | None = 1, expected_sha256: str | None = None
) -> ConversionModel:
    """Verify a model file, unpickle it and check its features.

    The file is read once; the bytes hashed are the bytes unpickled, so the file cannot
    change between the check and the load. ``expected_sha256`` is a digest pinned
    outside the model folder (None or empty: none): a file that does not have it is
    refused before anything is unpickled, whatever its card says. The card's own digest
    is checked too, which catches a file damaged or half-written beside an intact card.
    """
    path = Path(model_path)
    # An empty pin (as an unset variable of docker-compose gives it) is no pin.
    pinned = check_pin(expected_sha256) if expected_sha256 and expected_sha256.strip() else None
    if not path.is_file():
        raise ArtifactError(f"no model file at {path}; run `python -m training train` first")
    card = read_card(path)
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if pinned is not None and actual != pinned:
        raise PinnedDigestError(
            f"{path} has SHA-256 {actual}, the pinned digest is {pinned}: refusing to unpickle"
        )
    expected = card.get("artifact_sha256")
    if expected != actual:
        raise ArtifactError(
            f"{path} has SHA-256 {actual}, its card says {expected}: refusing to unpickle"
        )
    model = pickle.loads(data)
    del data
    if not isinstance(model, ConversionModel):
        raise ArtifactError(f"{path} holds a {type(model).__name__}, not a ConversionModel")
    if model.version != card.get("version"):
        raise ArtifactError(
            f"{path} holds model {model.version}, its card describes {card.get('version')}"
        )
    model.check_features()
    if threads is not None:
        model.set_threads(threads)
    return model
