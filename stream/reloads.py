"""Hot reload of the model: a newly deployed artifact swapped in once it verifies."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from artifact import ArtifactError, PinnedDigestError, load_model, read_card
from artifact.explain import prepare as prepare_reasons
from stream.metrics import WorkerMetrics
from stream.processor import Processor
from stream.settings import StreamSettings

log = logging.getLogger(__name__)


class ModelReloads:
    """Watches the model's card and swaps in the artifact it names when that changes."""

    def __init__(
        self, settings: StreamSettings, processor: Processor, metrics: WorkerMetrics
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.metrics = metrics
        self.model_sha: str | None = None  # the served artifact's digest, from its card
        self.failed_sha: str | None = None
        with contextlib.suppress(ArtifactError, OSError, ValueError):
            self.model_sha = read_card(settings.model_path).get("artifact_sha256")

    async def reload_model(self) -> bool:
        """Swap in a newly deployed artifact once it verifies; return whether it did.

        The card beside the pickle names the artifact's SHA-256; a new digest means a
        new artifact. One that fails to load, or whose digest is not the pinned one
        (``SCORER_MODEL_SHA256``), is logged once and skipped until its card changes
        again; the current model keeps scoring.
        """
        path = self.settings.model_path
        try:
            card = await asyncio.to_thread(read_card, path)
        except (ArtifactError, OSError, ValueError):
            return False
        sha = card.get("artifact_sha256")
        if sha in (self.model_sha, self.failed_sha):
            return False
        current = self.processor.model
        try:
            model = await asyncio.to_thread(
                load_model, path, expected_sha256=self.settings.model_sha256
            )
            if self.settings.reasons:
                await asyncio.to_thread(prepare_reasons, model)
        except (ArtifactError, OSError, ValueError) as exc:
            log.warning(
                "model reload: %s not loaded, keeping %s: %s",
                card.get("version"),
                current.version,
                exc,
            )
            result = "digest_mismatch" if isinstance(exc, PinnedDigestError) else "failed"
            self.metrics.model_reloads.labels(result).inc()
            self.failed_sha = sha
            return False
        self.processor.model = model
        self.model_sha, self.failed_sha = sha, None
        self.metrics.use_model(model.version)
        self.metrics.model_reloads.labels("loaded").inc()
        log.info("model reload: %s replaces %s", model.version, current.version)
        return True
