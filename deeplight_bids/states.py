"""The cognitive-state vocabulary of the published DeepLight models.

Reference section 4: within an HCP task, a state's index is its rank in the
alphabetical order of the task's event types; the tasks are concatenated in
alphabetical order, giving 20 states.  Both published models decode the first 16
(``WM`` was held out for the transfer experiments).
"""

from __future__ import annotations

HCP_TASK_STATES = {
    "EMOTION": ("fear", "neut"),
    "GAMBLING": ("loss", "neut", "win"),
    "LANGUAGE": ("math", "story"),
    "MOTOR": ("lf", "lh", "rf", "rh", "t"),
    "RELATIONAL": ("match", "relation"),
    "SOCIAL": ("mental", "other"),
    "WM": ("body", "faces", "places", "tools"),
}

#: All 20 HCP states as ``"<TASK>_<state>"`` in one-hot order (indices 0-19).
HCP_STATES = tuple(f"{task}_{state}" for task, states in HCP_TASK_STATES.items() for state in states)

#: The 16 output states of both published models (indices 0-15; WM excluded).
PRETRAINED_STATES = HCP_STATES[:16]

# HCP EV-file stems (and common BIDS spellings of them) -> state name, per task.
# Files not listed here (cue.txt, win.txt/loss.txt blocks, response files) map to nothing.
_HCP_TRIAL_TYPE_ALIASES = {
    "GAMBLING": {"win_event": "win", "loss_event": "loss", "neut_event": "neut"},
    "SOCIAL": {"mental_resp": "mental", "other_resp": "other"},
    "WM": {f"{level}_{x}": x for level in ("0bk", "2bk") for x in ("body", "faces", "places", "tools")},
}


def hcp_task_name(task: str | None) -> str | None:
    """Return the HCP task name (``"MOTOR"``) for a BIDS task label, or None.

    BIDS task labels are matched case-insensitively (``motor``, ``MOTOR``), also
    with a ``tfMRI``/``tfmri`` prefix as some HCP conversions write them.
    """
    if task is None:
        return None
    key = str(task).upper()
    if key.startswith("TFMRI"):
        key = key[5:].lstrip("_")
    return key if key in HCP_TASK_STATES else None


def hcp_state_map(task: str | None) -> dict[str, str]:
    """Map trial types of an HCP task to ``"<TASK>_<state>"`` names.

    Parameters
    ----------
    task : str
        BIDS task label of an HCP task (case-insensitive).

    Returns
    -------
    dict
        ``trial_type -> state name``; both the state names themselves (``"lf"``)
        and the HCP EV-file stems (``"win_event"``, ``"2bk_body"``) are keys.
        Empty when the task is not an HCP task.
    """
    name = hcp_task_name(task)
    if name is None:
        return {}
    mapping = {state: f"{name}_{state}" for state in HCP_TASK_STATES[name]}
    for alias, state in _HCP_TRIAL_TYPE_ALIASES.get(name, {}).items():
        mapping[alias] = f"{name}_{state}"
    return mapping
