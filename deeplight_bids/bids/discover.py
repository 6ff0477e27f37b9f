"""Find the runs to process with pybids.

For every participant/session/task/run: the preprocessed BOLD in the requested
space (fMRIPrep-style derivatives), its brain mask, the raw ``events.tsv``
(inheritance principle honoured) and ``RepetitionTime`` (sidecar inheritance
honoured).  Runs that cannot be processed are kept with a ``skip_reason`` so the
command line can print what is processed and what is skipped, and why.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deeplight_bids.derivatives.links import dataset_roots
from deeplight_bids.exceptions import InputDataError, NoRunsFoundError

if TYPE_CHECKING:
    from bids import BIDSLayout

    from deeplight_bids.config import Config, InputsConfig

#: A path given as text or as a path object.
PathLike = str | os.PathLike


LOGGER = logging.getLogger("deeplight_bids.discover")

#: Entities that identify one acquisition of one run (besides space/res/desc/suffix).
RUN_ENTITIES = ("subject", "session", "task", "acquisition", "ceagent", "reconstruction", "direction", "run", "echo")
_BOLD_EXTENSIONS = [".nii.gz", ".nii"]


@dataclass
class Run:
    """One preprocessed task-fMRI run and what is needed to decode it.

    Attributes
    ----------
    entities : dict
        BIDS entities identifying the run (``subject``, ``task``, ``run``, ...).
    bold : pathlib.Path or None
        Preprocessed 4D BOLD, ``(x, y, z, n_volumes)``.
    mask, events : pathlib.Path or None
    t_r : float or None
        Repetition time in seconds.
    space, res : str or None
        Template space and resolution of ``bold``.
    skip_reason : str or None
        Why the run cannot be processed (None: it can).
    """

    entities: dict
    bold: Path | None = None
    mask: Path | None = None
    events: Path | None = None
    t_r: float | None = None
    space: str | None = None
    res: str | None = None
    skip_reason: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return self.entities["subject"]

    # Checked access for code that handles processable runs only (discovery set these, or skip_reason says why
    # not): the files and TR as non-optional types, and a clear error instead of a None further down.
    @property
    def bold_file(self) -> Path:
        """``bold``, which a processable run has."""
        return self._required(self.bold, "preprocessed BOLD")

    @property
    def mask_file(self) -> Path:
        """``mask``, which a processable run has."""
        return self._required(self.mask, "brain mask")

    @property
    def events_file(self) -> Path:
        """``events``, for the steps that need a run's events (labels, GLM)."""
        return self._required(self.events, "events.tsv")

    @property
    def repetition_time(self) -> float:
        """``t_r`` in seconds, which a processable run has."""
        return float(self._required(self.t_r, "RepetitionTime"))

    def _required(self, value, what):
        if value is None:
            raise InputDataError(
                f"{self.label}: no {what} found for this run"
                + (f" ({self.skip_reason})" if self.skip_reason else "")
                + "; check the run's files in BIDS_DIR and its derivatives."
            )
        return value

    @property
    def label(self) -> str:
        """BIDS-style prefix of the run, e.g. ``sub-01_ses-1_task-motor_run-1``."""
        from deeplight_bids.derivatives.naming import RUN_ENTITIES  # deferred: loads nibabel and SciPy

        return "_".join(f"{short}-{self.entities[k]}" for k, short in RUN_ENTITIES if self.entities.get(k) is not None)


def find_derivatives(bids_dir: PathLike, derivatives: Sequence[PathLike] = ()) -> list[Path]:
    """Folders holding the preprocessed BOLD.

    Explicit ``derivatives`` win; else ``BIDS_DIR/derivatives/fmriprep*``; else BIDS_DIR
    itself when its ``dataset_description.json`` says it is a derivative; else the other
    derivative datasets in ``BIDS_DIR/derivatives`` (e.g. ``hcp`` written by
    ``deeplight-bids-hcp fetch``).
    """
    bids_dir = Path(bids_dir)
    if bids_dir.exists() and not bids_dir.is_dir():
        raise InputDataError(
            f"{bids_dir}: BIDS_DIR is a file, not a folder; point BIDS_DIR at the dataset's root "
            "folder (the one holding dataset_description.json)."
        )
    if derivatives:
        out = [Path(d) for d in derivatives]
    else:
        out = sorted(p for p in (bids_dir / "derivatives").glob("fmriprep*") if p.is_dir())
        if not out and _dataset_type(bids_dir) == "derivative":
            out = [bids_dir]
        if not out and (bids_dir / "derivatives").is_dir():
            out = sorted(
                p for p in (bids_dir / "derivatives").iterdir() if p.is_dir() and _dataset_type(p) == "derivative"
            )
    for folder in out:
        if not (folder / "dataset_description.json").is_file():
            raise InputDataError(
                f"{folder}: no dataset_description.json; a derivatives folder must be a BIDS-Derivatives "
                "dataset (as fMRIPrep writes) — add the file or point --derivatives at the right folder."
            )
    return out


def job_dataset_roots(config: Config) -> dict[str, Path]:
    """``{name: root}`` of the datasets a job reads: BIDS_DIR and the derivatives :func:`find_derivatives` finds.

    What the outputs' ``DatasetLinks`` and the sidecars' BIDS URIs name
    (:func:`deeplight_bids.derivatives.links.dataset_roots`).
    """
    return dataset_roots(config.inputs.bids_dir, find_derivatives(config.inputs.bids_dir, config.inputs.derivatives))


def _dataset_type(folder):
    try:
        return json.loads((Path(folder) / "dataset_description.json").read_text()).get("DatasetType", "raw")
    except (OSError, json.JSONDecodeError):
        return None


def build_layout(bids_dir: PathLike, derivatives: Sequence[PathLike]) -> BIDSLayout:
    """A :class:`bids.BIDSLayout` over the raw dataset and its derivatives (read only)."""
    from bids import BIDSLayout

    bids_dir = Path(bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputDataError(
            f"{bids_dir}: not a BIDS dataset (no dataset_description.json); point BIDS_DIR at the dataset root."
        )
    is_derivative = _dataset_type(bids_dir) == "derivative"
    extra = [d for d in derivatives if Path(d).resolve() != bids_dir.resolve()]
    try:
        return BIDSLayout(bids_dir, validate=False, is_derivative=is_derivative, derivatives=extra or False)
    except Exception as err:  # pybids raises several types for malformed datasets
        raise InputDataError(f"{bids_dir}: pybids could not index the dataset ({err}).") from err


def entity_value(value: object) -> int | str:
    """What an entity value means, for matching across datasets: ``"01"``, ``"1"`` and ``1`` -> ``1``.

    fMRIPrep writes ``run-1`` for a raw ``run-01`` (pybids reads run as an integer), so
    runs, echoes and any all-digit label are compared as integers; other labels as text.
    """
    text = str(value)
    return int(text) if text.isdigit() else text


def _run_key(entities):
    return tuple((k, entity_value(entities[k])) for k in RUN_ENTITIES if entities.get(k) is not None)


def _entity_strings(entities):
    """The run's entities as written in the preprocessed BOLD's name (``run-1`` stays ``"1"``).

    Output names use these strings: they repeat the derivative's own names, so outputs
    line up with the fMRIPrep files they come from, whatever the raw dataset's padding.
    """
    return {k: str(entities[k]) for k in RUN_ENTITIES if entities.get(k) is not None}


def _query_filters(participant_label=None, session_label=None, task=None, bids_filters=None, layout=None):
    filters = dict(bids_filters or {})
    if participant_label:
        filters["subject"] = list(participant_label)
    if session_label:
        filters["session"] = list(session_label)
    if task:
        # Task labels are matched case-insensitively against those in the dataset.
        wanted = {t.lower() for t in task}
        filters["task"] = [t for t in layout.get_tasks() if t.lower() in wanted] or list(task)
    return filters


def discover_runs(
    layout: BIDSLayout,
    space: str | None = None,
    participant_label: Sequence[str] | None = None,
    session_label: Sequence[str] | None = None,
    task: Sequence[str] | None = None,
    bids_filters: dict | None = None,
) -> list[Run]:
    """List the runs to process (and those skipped, with reasons).

    Parameters
    ----------
    layout : bids.BIDSLayout
    space : str or None
        Template space of the preprocessed BOLD to use; None: the first of
        :data:`deeplight_bids.prepare.spaces.SPACE_PREFERENCE` a run has.  A space the app
        cannot use (native, unknown: see :mod:`deeplight_bids.prepare.spaces`) makes the
        run skipped with the one-line refusal.
    participant_label, session_label, task : sequence of str or None
    bids_filters : dict or None
        Extra pybids filters applied to the BOLD query.

    Returns
    -------
    list of Run
        Sorted by subject, session, task, run; skipped runs have ``skip_reason``.

    Raises
    ------
    NoRunsFoundError
        When no preprocessed BOLD matches at all (the message says what was searched).
    """
    if participant_label:
        known = set(layout.get_subjects())
        missing = [p for p in participant_label if p not in known]
        if missing:
            raise NoRunsFoundError(
                f"{layout.root}: participant(s) {', '.join('sub-' + m for m in missing)} not found in the dataset "
                f"(present: {', '.join('sub-' + s for s in sorted(known)[:10]) or 'none'}); fix --participant-label."
            )
    filters = _query_filters(participant_label, session_label, task, bids_filters, layout)
    if "desc" not in layout.get_entities():
        raise NoRunsFoundError(
            f"{layout.root}: no derivatives dataset found (searched BIDS_DIR/derivatives/fmriprep* and other "
            "derivative datasets there); run fMRIPrep first or point --derivatives at its outputs."
        )
    bolds = layout.get(
        suffix="bold", desc="preproc", datatype="func", extension=_BOLD_EXTENSIONS, return_type="object", **filters
    )
    if not bolds:
        searched = ", ".join(f"{k}={v}" for k, v in filters.items()) or "all participants"
        raise NoRunsFoundError(
            f"{layout.root}: no preprocessed BOLD found (searched *_desc-preproc_bold.nii[.gz] in the derivatives "
            f"for {searched}); run fMRIPrep first or point --derivatives at its outputs."
        )

    by_run: dict[tuple[tuple[str, int | str], ...], list[Any]] = {}
    for bold in bolds:
        by_run.setdefault(_run_key(bold.entities), []).append(bold)

    # deferred: loads nibabel and SciPy
    from deeplight_bids.prepare.spaces import KNOWN_SPACES, SPACE_PREFERENCE, refusal

    runs = []
    for _key, candidates in sorted(by_run.items(), key=lambda item: tuple((k, str(v)) for k, v in item[0])):
        entities = _entity_strings(candidates[0].entities)
        found = sorted({b.entities.get("space") for b in candidates}, key=str)
        chosen = space if space is not None else next((s for s in SPACE_PREFERENCE if s in found), None)
        if chosen not in KNOWN_SPACES:
            # a native/unknown --space is refused whatever the run has; by default, the run's own space
            refused = chosen if space is not None else found[0]
            runs.append(Run(entities=entities, space=refused, skip_reason=refusal(refused)))
            continue
        in_space = [b for b in candidates if b.entities.get("space") == chosen]
        if not in_space:
            runs.append(Run(entities=entities, skip_reason=_not_in_space(chosen, found, candidates)))
            continue
        space_of_run = chosen
        # Prefer 2 mm (the reference grid): no resampling needed.
        in_space.sort(key=lambda b: (str(b.entities.get("res")) != "2", str(b.entities.get("res")), b.path))
        bold = in_space[0]
        twins = [b for b in in_space[1:] if str(b.entities.get("res")) == str(bold.entities.get("res"))]
        if twins:
            # e.g. two fMRIPrep folders, or .nii and .nii.gz: which one is meant is not ours to guess
            paths = ", ".join(str(Path(b.path)) for b in [bold, *twins])
            runs.append(
                Run(
                    entities=entities,
                    bold=Path(bold.path),
                    skip_reason=(
                        f"duplicate run: {len(twins) + 1} preprocessed BOLD files ({paths}); keep one, or select one "
                        "with --derivatives or --bids-filter-file"
                    ),
                )
            )
            continue
        entities = _entity_strings(bold.entities)
        run = Run(entities=entities, bold=Path(bold.path), space=space_of_run, res=bold.entities.get("res"))
        run.metadata = _metadata(layout, bold.path)
        if "RepetitionTime" not in run.metadata:
            # fMRIPrep copies RepetitionTime; if a derivative lacks it, the raw BOLD's sidecar
            # (entities matched by value: run-1 == run-01) is the source of truth
            raw_tr = _raw_metadata(layout, entities).get("RepetitionTime")
            if raw_tr is not None:
                run.metadata["RepetitionTime"] = raw_tr
        run.mask = _find_mask(layout, bold)
        run.events = _find_events(layout, entities)
        run.t_r = _repetition_time(run.metadata)
        stem = run.bold_file.name.split("_desc-")[0]
        if run.mask is None:
            run.skip_reason = (
                f"no brain mask next to {run.bold}; add {stem}_desc-brain_mask.nii.gz (fMRIPrep writes it)"
            )
        elif run.events is None:
            run.skip_reason = (
                f"no events file for this run in {layout.root}; add {run.label}_events.tsv "
                "(onset, duration, trial_type) beside the raw BOLD"
            )
        elif run.t_r is None:
            sidecar = run.bold_file.name.split(".")[0] + ".json"
            got = run.metadata.get("RepetitionTime")
            why = "missing" if got is None else f"invalid ({got!r})"
            run.skip_reason = (
                f"RepetitionTime {why} for {run.bold}; add it in seconds to {sidecar} (or an inherited sidecar)"
            )
        runs.append(run)
    return runs


def _not_in_space(space, found, candidates):
    shown = ", ".join(str(s) if s else "native" for s in found)
    return (
        f"no BOLD in space {space} (found: {shown}: {Path(candidates[0].path).name}); run fMRIPrep with "
        f"--output-spaces {space}:res-2, or pass another --space"
    )


def _raw_metadata(layout, entities):
    """Metadata of the raw BOLD of the run (entities matched by value), or {}."""
    want = {k: entity_value(v) for k, v in entities.items()}
    for cand in layout.get(suffix="bold", task=entities["task"], extension=_BOLD_EXTENSIONS, return_type="object"):
        if cand.entities.get("desc") is not None or cand.entities.get("space") is not None:
            continue
        ents = {k: entity_value(v) for k, v in cand.entities.items() if k in RUN_ENTITIES}
        if ents == want:
            return _metadata(layout, cand.path)
    return {}


def _metadata(layout, path):
    try:
        return dict(layout.get_metadata(path))
    except Exception:  # metadata is optional; a broken sidecar is reported as "TR missing"
        return {}


def _repetition_time(metadata):
    t_r = metadata.get("RepetitionTime")
    try:
        t_r = float(t_r)
    except (TypeError, ValueError):
        return None
    return t_r if t_r > 0 else None


def _find_mask(layout, bold):
    entities = {k: v for k, v in bold.entities.items() if k in RUN_ENTITIES or k in ("space", "res", "cohort")}
    query = {k: entities.get(k) for k in ("subject", "session", "task", "acquisition", "direction", "run", "space")}
    query = {k: v for k, v in query.items() if v is not None}
    masks = layout.get(
        suffix="mask", desc="brain", extension=_BOLD_EXTENSIONS, datatype="func", return_type="object", **query
    )
    # Same remaining entities (res, echo, ...) as the BOLD, when present.
    masks = [m for m in masks if all(m.entities.get(k) == v for k, v in entities.items() if k not in query)]
    return Path(masks[0].path) if masks else None


def _find_events(layout, entities):
    """Most specific events.tsv whose entities all agree with the run (inheritance principle)."""
    candidates = layout.get(suffix="events", extension=".tsv", task=entities["task"], return_type="object")
    best, best_score = None, -1
    for cand in candidates:
        cand_entities = {k: entity_value(v) for k, v in cand.entities.items() if k in RUN_ENTITIES}
        if any(entities.get(k) is None or entity_value(entities[k]) != v for k, v in cand_entities.items()):
            continue
        if cand.entities.get("desc") is not None:
            continue  # derivative event files are not the raw ones
        score = len(cand_entities)
        if score > best_score:
            best, best_score = cand, score
    return Path(best.path) if best is not None else None


def discover_selected_runs(layout: BIDSLayout, inputs: InputsConfig) -> list[Run]:
    """:func:`discover_runs` with a job's selection: ``--space``, ``--participant-label``,
    ``--session-label``, ``--task`` and ``--bids-filter-file`` (the job's ``config.inputs``)."""
    return discover_runs(
        layout,
        space=inputs.space,
        participant_label=inputs.participant_label,
        session_label=inputs.session_label,
        task=inputs.task,
        bids_filters=inputs.bids_filters,
    )


def format_run_table(runs: Sequence[Run]) -> str:
    """A plain-text table of what will be processed and what is skipped, and why."""
    lines = [f"{'run':<48} {'status':<10} detail"]
    for run in runs:
        status = "skip" if run.skip_reason else "process"
        detail = run.skip_reason or f"TR={run.t_r:g}s space={run.space}" + (f" res={run.res}" if run.res else "")
        if not run.skip_reason and run.space != "MNI152NLin6Asym":
            detail += " (TemplateFlow transform to MNI152NLin6Asym)"
        lines.append(f"{run.label:<48} {status:<10} {detail}")
    n_proc = sum(r.skip_reason is None for r in runs)
    lines.append(f"{n_proc} run(s) to process, {len(runs) - n_proc} skipped")
    return "\n".join(lines)
