"""What the group level checks in the participant outputs before it writes anything.

* Every participant mean relevance map is read in full first: a truncated or corrupt one
  is left out (listed in the report's problems, one warning line naming the file) instead
  of stopping the group level half-way with group files written and no manifest.
* With ``--correct-only``, every run's 4D relevance map is read through once (gzip
  stream): a truncated one is left out of the correct-only maps the same way.
* Maps of one model and task must come from the same participant-level settings (their
  sidecars' ``LRPTarget`` and ``SettingsHash``): maps of different settings are never
  pooled; the group level stops with one line naming which participants have which
  settings, before writing anything.
* Participants of BIDS_DIR that a model was fitted on (its card's training and validation
  participants) and that have no outputs are not decoded by design: they are set aside as
  "training participants (not decoded)", not listed as problems (:func:`set_aside_fitting_participants`).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from deeplight_bids.exceptions import InputDataError

if TYPE_CHECKING:
    from deeplight_bids.group.stats import Inventory

LOGGER = logging.getLogger("deeplight_bids")

#: Sidecar fields of a participant mean map that must agree for maps to be pooled.
SETTINGS_FIELDS = ("LRPTarget", "SettingsHash")


#: Model provenance keys naming the participants a model was fitted on, and their role.
FITTING_KEYS = (("TrainingParticipants", "training"), ("ValidationParticipants", "validation"))


def fitting_participants(inventory: Inventory) -> dict[str, str]:
    """Participants of BIDS_DIR without outputs that a model of the inventory was fitted on.

    Parameters
    ----------
    inventory : deeplight_bids.group.stats.Inventory

    Returns
    -------
    dict
        ``{label: "training" | "validation"}``, sorted by label: expected participants (BIDS_DIR)
        with no finished run whose label a model's ``TrainingParticipants`` or
        ``ValidationParticipants`` lists ("training" wins where a card lists both).
    """
    decoded = set(inventory.participants)
    expected = set(inventory.expected)
    roles: dict[str, str] = {}
    for model in inventory.models.values():
        for key, role in FITTING_KEYS:
            for label in (model or {}).get(key) or ():
                label = str(label).removeprefix("sub-")
                if label in expected and label not in decoded and roles.get(label) != "training":
                    roles[label] = role
    return dict(sorted(roles.items()))


def set_aside_fitting_participants(inventory: Inventory) -> dict[str, str]:
    """Drop the "no participant-level outputs" problems of :func:`fitting_participants`; returns them.

    Their outputs are missing by design (a model is not evaluated on the data it was fitted on), so
    they are neither warnings nor problems; the report lists them as training participants.
    """
    roles = fitting_participants(inventory)
    inventory.problems = [
        p for p in inventory.problems if not (p["participant"] in roles and p["item"] == f"sub-{p['participant']}")
    ]
    return roles


def describe_fitting_participants(roles: Mapping[str, str]) -> str:
    """One line: ``training participants (not decoded; the model was fitted on them): 01, 02, 03, 04 (validation)``."""
    labels = ", ".join(f"{label} (validation)" if role == "validation" else label for label, role in roles.items())
    return f"training participants (not decoded; the model was fitted on them): {labels}"


def _problem(inventory, subject, path, text, log):
    inventory.problems.append({"participant": subject, "item": path.name, "problem": text})
    log.warning("group: %s: %s", path, text)


def _map_readable(path):
    """None if the 3D map at ``path`` reads in full, else the reason."""
    import nibabel as nib

    try:
        data = np.asarray(nib.load(path).dataobj)
    except Exception as err:  # nibabel/gzip raise EOFError, OSError, zlib.error, ValueError...
        return f"{type(err).__name__}: {err}".strip(": ")
    if data.size == 0:
        return "no data"
    return None


def _stream_readable(path, chunk=1 << 24):
    """None if the (gzipped) 4D NIfTI at ``path`` decompresses to its full length, else the reason."""
    import nibabel as nib

    try:
        img = nib.load(path)
        expected = int(img.dataobj.offset) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
        opener = gzip.open if str(path).endswith(".gz") else open
        total = 0
        with opener(path, "rb") as fobj:
            for block in iter(lambda: fobj.read(chunk), b""):
                total += len(block)
    except (Exception, zlib.error) as err:
        return f"{type(err).__name__}: {err}".strip(": ")
    if total < expected:
        return f"{total} of {expected} bytes"
    return None


def _settings_of(rec):
    return tuple((name, rec.metadata.get(name)) for name in SETTINGS_FIELDS if rec.metadata.get(name) is not None)


def _check_settings(inventory):
    """InputDataError when the maps of one model and task were made with different settings."""
    groups = {}
    for rec in inventory.maps:
        groups.setdefault((rec.key, rec.task), []).append(rec)
    for (_, task), recs in sorted(groups.items()):
        by_settings = {}
        for rec in recs:
            by_settings.setdefault(_settings_of(rec), set()).add(rec.subject)
        # maps written before sidecars had a SettingsHash are compared by their LRPTarget alone
        targets = {dict(s).get("LRPTarget") for s in by_settings}
        hashes = {dict(s).get("SettingsHash") for s in by_settings} - {None}
        if len(targets) <= 1 and len(hashes) <= 1:
            continue
        parts = [
            f"{', '.join(f'{k} {v}' for k, v in settings) or 'unknown settings'}: "
            f"{', '.join('sub-' + s for s in sorted(subjects))}"
            for settings, subjects in sorted(by_settings.items(), key=lambda kv: sorted(kv[1]))
        ]
        raise InputDataError(
            f"{inventory.output_dir}: participant mean relevance maps of task {task} were made with different "
            f"settings ({'; '.join(parts)}) and are not pooled; re-run the participant level of the odd "
            "participants with the others' settings (it replaces their maps), or select participants of one "
            "setting with --participant-label."
        )


def screen_inventory(inventory: Inventory, correct_only: bool = False, log: logging.Logger = LOGGER) -> Inventory:
    """Drop unreadable inputs (listed as problems) and refuse mixed settings, before any group write.

    Parameters
    ----------
    inventory : deeplight_bids.group.stats.Inventory
        Changed in place: unreadable mean maps leave ``maps``; runs whose 4D relevance
        is unreadable lose ``relevance`` (with ``correct_only``); each gets a
        ``problems`` entry.
    correct_only : bool
        Also read every run's 4D relevance map through (``--correct-only`` reads them).

    Returns
    -------
    Inventory
        The same object.

    Raises
    ------
    InputDataError
        Maps of one model and task with different ``LRPTarget`` / ``SettingsHash``.
    """
    kept = []
    for rec in inventory.maps:
        reason = _map_readable(rec.path)
        if reason is None:
            kept.append(rec)
        else:
            _problem(
                inventory,
                rec.subject,
                rec.path,
                f"unreadable mean relevance map ({reason}), left out of the "
                f"group maps; re-run the participant level for sub-{rec.subject}",
                log,
            )
    inventory.maps = kept
    if correct_only:
        for rec in inventory.runs:
            if rec.relevance is None:
                continue
            reason = _stream_readable(rec.relevance)
            if reason is not None:
                _problem(
                    inventory,
                    rec.subject,
                    rec.relevance,
                    f"unreadable 4D relevance map ({reason}), left "
                    f"out of the --correct-only maps; re-run the participant level for sub-{rec.subject}",
                    log,
                )
                rec.relevance = None
    _check_settings(inventory)
    return inventory
