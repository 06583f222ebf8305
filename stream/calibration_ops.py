"""The operator's commands on online calibration.

    python -m stream calibration show
    python -m stream calibration pause    [--model-version V]
    python -m stream calibration resume   [--model-version V]
    python -m stream calibration rollback --to SEQ|offline [--model-version V]

Each change is a new record on ``conversion.calibrations`` (the topic keeps the whole
history): pause keeps the shift in use and stops the recalibrator moving it; resume lets
it move again; rollback puts back the shift of an earlier record (``offline``: none),
paused, so that it stays until the operator resumes. The worker and the API apply a new
record within ``SCORER_CALIBRATION_FOLLOW_S``. Without ``--model-version``, the version
of the deployed artifact (``SCORER_MODEL_PATH``) is meant.
"""

from __future__ import annotations

import asyncio

from artifact import read_card
from contracts.calibrations import CalibrationRecord, Reason, State
from stream.calibration_topic import publish, read_all
from stream.recalibration import make_record
from stream.settings import StreamSettings


class CalibrationCommandError(ValueError):
    """The command cannot be carried out (its message says why)."""


def deployed_version(settings: StreamSettings) -> str:
    """The model version of the deployed artifact's card."""
    return str(read_card(settings.model_path)["version"])


def describe(record: CalibrationRecord) -> str:
    """One line per record."""
    moved = "" if record.target_shift is None else f", estimate {record.target_shift:+.4f}"
    return (
        f"{record.calibration_id}: shift {record.shift:+.4f} ({record.state}, "
        f"{record.reason}{moved}; {record.outcomes} outcomes, {record.conversions} "
        f"conversions; {record.decided_at})"
    )


def next_record(
    history: list[CalibrationRecord], version: str, action: str, to: str | None = None
) -> CalibrationRecord:
    """The record an action publishes, given the topic's history."""
    mine = [r for r in history if r.model_version == version]
    current = max(mine, key=lambda r: r.seq) if mine else None
    seq = 1 if current is None else current.seq + 1
    shift = 0.0 if current is None else current.shift
    state: State = "paused"
    reason: Reason
    if action == "pause":
        reason = "pause"
    elif action == "resume":
        state, reason = "active", "resume"
    elif action == "rollback":
        reason = "rollback"
        if to is None:
            raise CalibrationCommandError("rollback needs --to SEQ or --to offline")
        if to == "offline":
            shift = 0.0
        else:
            earlier = [r for r in mine if str(r.seq) == to]
            if not earlier:
                known = ", ".join(str(r.seq) for r in mine) or "none"
                raise CalibrationCommandError(
                    f"{version} has no calibration {to} (its records: {known})"
                )
            shift = earlier[0].shift
    else:
        raise CalibrationCommandError(f"unknown action {action!r}")
    return make_record(version, seq, shift, state, reason)


def run_calibration(
    settings: StreamSettings, action: str, version: str | None, to: str | None
) -> str:
    """Carry out an operator's command; return what to print."""
    reader = asyncio.run(read_all(settings))
    if action == "show":
        if not reader.history:
            return "no online calibration yet: every model scores as shipped"
        lines = [describe(r) for r in reader.history[-20:]]
        lines.append("in use: " + ", ".join(r.calibration_id for r in reader.latest.values()))
        return "\n".join(lines)
    record = next_record(reader.history, version or deployed_version(settings), action, to)
    asyncio.run(publish(settings, [record]))
    return "published " + describe(record)
