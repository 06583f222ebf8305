"""Saving and loading the model artifact with its model card."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

from artifact.model import ConversionModel

MODEL_FILE = "Pickled_model.pkl"
CARD_FILE = "model_card.json"


class ArtifactError(RuntimeError):
    """The model file or its card is missing, altered or unusable."""


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


def load_model(model_path: Path | str, *, threads: int | None = 1) -> ConversionModel:
    """Verify a model file against its card, unpickle it and check its features."""
    path = Path(model_path)
    if not path.is_file():
        raise ArtifactError(f"no model file at {path}; run `python -m training train` first")
    card = read_card(path)
    expected = card.get("artifact_sha256")
    actual = sha256_of(path)
    if expected != actual:
        raise ArtifactError(
            f"{path} has SHA-256 {actual}, its card says {expected}: refusing to unpickle"
        )
    with path.open("rb") as fh:
        model = pickle.load(fh)
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
