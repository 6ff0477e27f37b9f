"""Group-level statistics from the participant-level outputs in OUTPUT_DIR.

Inputs are found with pybids (``BIDSLayout(OUTPUT_DIR, validate=False,
is_derivative=True)``), never by globbing names.  pybids' default ``bids`` +
``derivatives`` configurations already parse every entity of our outputs (``desc``,
``space``, ``res``, ``label``) and take the suffix (``timeseries``, ``bold``,
``relevance``, ``summary``) from the name, so no custom configuration is needed; the
folders that hold no participant outputs (``work``, ``logs``, ``group``, ``figures``,
``models``) are excluded from the index.

Units of analysis
-----------------
* A *run* is one ``*_desc-predictions_timeseries.tsv`` whose JSON sidecar exists (the
  participant level writes the sidecar last; a TSV without it is an unfinished run and is
  listed as partial, not used).
* *Labelled* volumes are those with ``correct`` 1 or 0 (a state the model can output).
* The participant is the unit of the across-participant statistics: its runs (and
  sessions) of a task are pooled.
* Runs are grouped by the model that processed them (``Model`` provenance: architecture
  and weights SHA-256); different models are never mixed in one statistic or map.

Metrics
-------
* accuracy = correct / labelled;
* balanced accuracy = mean over the true states present of the per-state recall;
* chance level = 1 / number of distinct true states among the labelled volumes (the
  expected accuracy and balanced accuracy of guessing uniformly among those states);
* across participants: mean, SD (ddof 1) and the t-based 95% interval
  ``mean ± t(0.975, n-1) · SD / √n`` (n/a for fewer than 2 participants);
* confusion matrices pool the labelled volumes of all participants (rows: true state,
  columns: predicted state; row-normalised: each row divided by its sum);
* time within a block: a *block* is a maximal stretch of consecutive volumes with the same
  ``true_state`` (the labels already include the participant level's haemodynamic shift,
  so "onset" is the first labelled volume of the block, not the event onset); volume k of
  a block has ``volumes_since_onset = k`` (0-based).  Per participant the accuracy at
  each k pools its blocks; the group row gives the pooled accuracy and the mean, SD and
  95% interval of the participant accuracies.

Relevance maps
--------------
Per model and task (:mod:`deeplight_bids.group.contrasts`, statistics in
:mod:`deeplight_bids.group.inference`): each state's participant mean maps
(``label-<state>_desc-mean``) are averaged (``contrast-<state>_stat-effect``); the states are
compared within participants (``contrast-<state>VsOthers`` / ``<A>Vs<B>``: paired second-level
model, ``stat-{effect,t,z,p}``, a corrected threshold and a cluster table); a state's mean map
is tested against 0 only when the attribution method is signed.  From
:data:`MIN_T_PARTICIPANTS` participants on; below, effect maps only.  ``--correct-only``:
the same, from participant means over only the correctly decoded volumes of each state
(read from the 4D per-volume maps, a few volumes at a time).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deeplight_bids import readback
from deeplight_bids.derivatives.integrity import damaged_sidecars, read_marker
from deeplight_bids.derivatives.naming import label_value
from deeplight_bids.exceptions import InputDataError
from deeplight_bids.models.metrics import decoding_metrics
from deeplight_bids.quality.significance import blocks
from deeplight_bids.utils.tsv import read_tsv

LOGGER = logging.getLogger("deeplight_bids")

#: Folders of OUTPUT_DIR that hold no participant-level outputs.
NON_PARTICIPANT_FOLDERS = ("work", "logs", "group", "figures", "models")
RUN_ENTITIES = ("subject", "session", "task", "acquisition", "ceagent", "reconstruction", "direction", "run", "echo")


# --------------------------------------------------------------------------------------------
# inventory of participant outputs
# --------------------------------------------------------------------------------------------
def model_key(model: Mapping[str, Any] | None) -> str:
    """Identity of a model: architecture + weights checksum (never mixed at the group level)."""
    model = model or {}
    return f"{model.get('Architecture', 'unknown')}:{model.get('WeightsSHA256', 'unknown')}"


@dataclass
class RunRecord:
    """One finished participant-level run."""

    entities: dict
    predictions: Path
    metadata: dict
    relevance: Path | None = None

    @property
    def subject(self) -> str:
        return self.entities["subject"]

    @property
    def task(self) -> str:
        return self.entities["task"]

    @property
    def model(self) -> dict[str, Any]:
        return self.metadata.get("Model", {})

    @property
    def key(self) -> str:
        return model_key(self.model)

    @property
    def label(self) -> str:
        return "_".join(
            f"{short}-{self.entities[k]}"
            for k, short in (
                ("subject", "sub"),
                ("session", "ses"),
                ("task", "task"),
                ("acquisition", "acq"),
                ("run", "run"),
                ("echo", "echo"),
            )
            if self.entities.get(k) not in (None, "")
        )

    def read(self) -> pd.DataFrame:
        return read_tsv(self.predictions)


@dataclass
class MapRecord:
    """One participant mean relevance map (per task and explained state)."""

    subject: str
    task: str
    label: str
    path: Path
    metadata: dict

    @property
    def key(self) -> str:
        return model_key(self.metadata.get("Model"))

    @property
    def state(self) -> str:
        return self.metadata.get("State", self.label)


@dataclass
class Inventory:
    """What the participant level left in OUTPUT_DIR."""

    output_dir: Path
    runs: list = field(default_factory=list)
    maps: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # dicts: participant, item, problem
    expected: list = field(default_factory=list)  # participants of BIDS_DIR (labels)
    models: dict = field(default_factory=dict)  # key -> Model provenance

    @property
    def participants(self) -> list[str]:
        return sorted({r.subject for r in self.runs})

    def runs_of(self, key: str, task: str | None = None) -> list[RunRecord]:
        return [r for r in self.runs if r.key == key and (task is None or r.task == task)]

    def tasks_of(self, key: str) -> list[str]:
        return sorted({r.task for r in self.runs if r.key == key})


def _layout(output_dir, skip=()):
    from bids.layout import BIDSLayout, BIDSLayoutIndexer

    # pybids matches these against paths relative to OUTPUT_DIR, with a leading "/"
    names = "|".join(NON_PARTICIPANT_FOLDERS + ("code", "sourcedata", "stimuli"))
    ignore = [re.compile(rf"^/({names})(/|$)"), re.compile(r"/\.")]
    ignore += [re.compile("^/" + re.escape(str(Path(p).relative_to(output_dir))) + "$") for p in skip]
    indexer = BIDSLayoutIndexer(validate=False, ignore=ignore, index_metadata=True)
    return BIDSLayout(output_dir, validate=False, is_derivative=True, indexer=indexer)


def _no_outputs_error(output_dir, detail):
    return InputDataError(
        f"{output_dir}: no participant-level outputs found ({detail}); run 'deeplight-bids BIDS_DIR {output_dir} "
        "participant' first, and give the group level the same OUTPUT_DIR."
    )


def _run_key(entities):
    return tuple(str(entities.get(k)) if entities.get(k) is not None else "" for k in RUN_ENTITIES)


def expected_participants(bids_dir: str | os.PathLike[str] | None) -> list[str]:
    """Participant labels of BIDS_DIR (participants.tsv, else the sub-* folders); [] if unknown."""
    if bids_dir is None or not Path(bids_dir).is_dir():
        return []
    labels = set()
    table = Path(bids_dir) / "participants.tsv"
    if table.is_file():
        try:
            labels |= {str(p).removeprefix("sub-") for p in read_tsv(table)["participant_id"]}
        except (KeyError, ValueError, OSError):
            pass
    labels |= {
        p.name.removeprefix("sub-") for p in Path(bids_dir).iterdir() if p.is_dir() and p.name.startswith("sub-")
    }
    return sorted(labels)


def collect_inventory(output_dir: str | os.PathLike[str], bids_dir: str | os.PathLike[str] | None = None) -> Inventory:
    """Index OUTPUT_DIR with pybids; raises InputDataError when there is nothing to combine."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise _no_outputs_error(output_dir, "the folder does not exist")
    if not (output_dir / "dataset_description.json").is_file():
        raise _no_outputs_error(output_dir, "no dataset_description.json")

    description = output_dir / "dataset_description.json"
    if read_marker(description)[0] is None:
        raise InputDataError(
            f"{description}: damaged ({read_marker(description)[1]}); re-run the participant level for any "
            "participant (it writes the file again), then the group level."
        )
    damaged = damaged_sidecars(output_dir)  # one unreadable JSON stops pybids' whole index: left out instead
    try:
        layout = _layout(output_dir, [p for p, _ in damaged])
    except Exception as err:  # pybids raises ValueError/BIDSValidationError on a broken description
        raise _no_outputs_error(output_dir, f"pybids cannot index it: {err}") from err

    inv = Inventory(output_dir, expected=expected_participants(bids_dir))
    for path, reason in damaged:
        subject = path.relative_to(output_dir).parts[0].removeprefix("sub-")
        inv.problems.append(
            {
                "participant": subject,
                "item": path.name,
                "problem": f"damaged JSON sidecar ({reason}): its file is not used; re-run the participant level "
                f"for sub-{subject}",
            }
        )
    relevance = {
        _run_key(f.get_entities()): Path(f.path)
        for f in layout.get(desc="relevance", suffix="bold", extension=".nii.gz")
    }
    for f in layout.get(desc="predictions", suffix="timeseries", extension=".tsv"):
        ents = f.get_entities()
        meta = f.get_metadata()
        rec = RunRecord(ents, Path(f.path), meta, relevance.get(_run_key(ents)))
        if "Model" not in meta:
            inv.problems.append(
                {
                    "participant": ents["subject"],
                    "item": Path(f.path).name,
                    "problem": "unfinished run (no JSON sidecar): not used; re-run the participant level",
                }
            )
            continue
        try:
            frame = rec.read()
            missing = {"true_state", "predicted_state", "correct"} - set(frame.columns)
            if missing:
                raise ValueError(f"missing columns {sorted(missing)}")
        except (ValueError, OSError, pd.errors.ParserError) as err:
            inv.problems.append(
                {
                    "participant": ents["subject"],
                    "item": Path(f.path).name,
                    "problem": f"unreadable predictions table ({err}): not used",
                }
            )
            continue
        if rec.relevance is None and "lrp_target" in frame.columns:
            inv.problems.append(
                {
                    "participant": ents["subject"],
                    "item": Path(f.path).name,
                    "problem": "4D relevance map missing (run left out of --correct-only maps)",
                }
            )
        inv.runs.append(rec)
        inv.models.setdefault(rec.key, rec.model)

    for f in layout.get(desc="mean", suffix="relevance", extension=".nii.gz"):
        ents = f.get_entities()
        meta = f.get_metadata()
        if "Model" not in meta or "task" not in ents or "label" not in ents:
            inv.problems.append(
                {
                    "participant": ents.get("subject", "?"),
                    "item": Path(f.path).name,
                    "problem": "mean relevance map without complete sidecar: not used",
                }
            )
            continue
        inv.maps.append(MapRecord(ents["subject"], ents["task"], ents["label"], Path(f.path), meta))

    if not inv.runs:
        raise _no_outputs_error(output_dir, "no finished *_desc-predictions_timeseries.tsv with its JSON sidecar")

    done = set(inv.participants)
    for label in inv.expected:
        if label not in done:
            inv.problems.append(
                {
                    "participant": label,
                    "item": f"sub-{label}",
                    "problem": "no participant-level outputs (not processed, or failed)",
                }
            )
    for rec in inv.runs:
        has_lrp = rec.relevance is not None
        if has_lrp and not any(m.subject == rec.subject and m.task == rec.task for m in inv.maps):
            inv.problems.append(
                {
                    "participant": rec.subject,
                    "item": f"sub-{rec.subject} task-{rec.task}",
                    "problem": "participant mean relevance maps missing (participant level unfinished?)",
                }
            )
    # one entry per (participant, item, problem)
    seen, unique = set(), []
    for p in inv.problems:
        k = (p["participant"], p["item"], p["problem"])
        if k not in seen:
            seen.add(k)
            unique.append(p)
    inv.problems = sorted(unique, key=lambda p: (p["participant"], p["item"]))
    return inv


# --------------------------------------------------------------------------------------------
# decoding performance
# --------------------------------------------------------------------------------------------
def labelled_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with a state the model can output (``correct`` 1 or 0)."""
    return frame[frame["correct"].notna()]


def t_interval(values: Iterable[float | None], level: float = 0.95) -> tuple[int, float, float, float, float]:
    """(n, mean, sd, low, high) of ``values`` (NaNs dropped); SD/interval NaN for n < 2."""
    from scipy import stats

    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(values)
    if n == 0:
        return 0, np.nan, np.nan, np.nan, np.nan
    mean = float(values.mean())
    if n < 2:
        return n, mean, np.nan, np.nan, np.nan
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n))
    return n, mean, sd, mean - half, mean + half


def accuracy_table(runs: Iterable[RunRecord]) -> pd.DataFrame:
    """Per run and per participant (runs pooled) rows for the runs of one model and task."""
    rows = []
    pooled: dict[str, dict[str, Any]] = {}
    for rec in sorted(runs, key=lambda r: r.label):
        full = rec.read()
        frame = labelled_frame(full)
        m = decoding_metrics(frame["true_state"], frame["predicted_state"])
        rows.append(
            {
                "participant_id": f"sub-{rec.subject}",
                "session": rec.entities.get("session"),
                "run": rec.label,
                "level": "run",
                "n_volumes": len(full),
                **m,
            }
        )
        acc = pooled.setdefault(rec.subject, {"true": [], "pred": [], "n_volumes": 0, "n_runs": 0})
        acc["true"].extend(frame["true_state"])
        acc["pred"].extend(frame["predicted_state"])
        acc["n_volumes"] += len(full)
        acc["n_runs"] += 1
    for subject, acc in sorted(pooled.items()):
        m = decoding_metrics(acc["true"], acc["pred"])
        rows.append(
            {
                "participant_id": f"sub-{subject}",
                "session": None,
                "run": "all",
                "level": "participant",
                "n_volumes": acc["n_volumes"],
                **m,
            }
        )
    columns = [
        "participant_id",
        "session",
        "run",
        "level",
        "n_volumes",
        "n_labelled",
        "n_correct",
        "accuracy",
        "balanced_accuracy",
        "chance_level",
        "n_states",
    ]
    return pd.DataFrame(rows, columns=columns)


def group_summary(table: pd.DataFrame) -> pd.DataFrame:
    """mean, SD, 95% interval across participants of the participant-level metrics."""
    part = table[table["level"] == "participant"]
    rows = []
    for metric in ("accuracy", "balanced_accuracy", "chance_level"):
        n, mean, sd, low, high = t_interval(part[metric])
        vals = part[metric].dropna()
        rows.append(
            {
                "metric": metric,
                "n_participants": n,
                "mean": mean,
                "sd": sd,
                "ci95_low": low,
                "ci95_high": high,
                "min": vals.min() if len(vals) else np.nan,
                "max": vals.max() if len(vals) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def confusion_tables(runs: Iterable[RunRecord], states: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(counts, row-normalised) DataFrames; index = true states present, columns = model states."""
    true, pred = [], []
    for rec in runs:
        frame = labelled_frame(rec.read())
        true.extend(frame["true_state"])
        pred.extend(frame["predicted_state"])
    columns = list(states) + sorted(set(pred) - set(states))
    rows = [s for s in columns if s in set(true)] + sorted(set(true) - set(columns))
    counts = pd.DataFrame(0, index=rows, columns=columns, dtype=int)
    for t, p in zip(true, pred):
        counts.loc[t, p] += 1
    sums = counts.sum(axis=1).replace(0, np.nan)
    norm = counts.div(sums, axis=0)
    counts.index.name = norm.index.name = "true_state"
    return counts.reset_index(), norm.reset_index()


def block_positions(true_state: Sequence[Any]) -> np.ndarray:
    """0-based position of each volume in its block (:func:`deeplight_bids.quality.significance.blocks`); NaN if unlabelled."""
    pos = np.full(len(true_state), np.nan)
    for start, stop, _ in blocks(true_state):
        pos[start:stop] = np.arange(stop - start)
    return pos


def block_time_table(runs: Iterable[RunRecord]) -> pd.DataFrame:
    """Accuracy by volumes since block onset: pooled, and mean/SD/95% interval over participants."""
    per: dict[str, Any] = {}  # subject -> DataFrame(position, correct)
    for rec in runs:
        frame = rec.read()
        frame = frame.assign(
            position=block_positions(list(frame["true_state"].astype(object).where(frame["true_state"].notna(), None)))
        )
        frame = frame[frame["correct"].notna() & frame["position"].notna()]
        per.setdefault(rec.subject, []).append(frame[["position", "correct"]])
    columns = [
        "volumes_since_onset",
        "n_volumes",
        "n_correct",
        "accuracy_pooled",
        "n_participants",
        "accuracy_mean",
        "accuracy_sd",
        "ci95_low",
        "ci95_high",
    ]
    if not per:
        return pd.DataFrame(columns=columns)
    per = {s: pd.concat(f) for s, f in per.items()}
    positions = sorted({int(p) for f in per.values() for p in f["position"]})
    rows = []
    for k in positions:
        accs, n_vol, n_cor = [], 0, 0
        for frame in per.values():
            sel = frame.loc[frame["position"] == k, "correct"].astype(float)
            if len(sel):
                accs.append(sel.mean())
                n_vol += len(sel)
                n_cor += int(sel.sum())
        n, mean, sd, low, high = t_interval(accs)
        rows.append(
            {
                "volumes_since_onset": k,
                "n_volumes": n_vol,
                "n_correct": n_cor,
                "accuracy_pooled": n_cor / n_vol if n_vol else np.nan,
                "n_participants": n,
                "accuracy_mean": mean,
                "accuracy_sd": sd,
                "ci95_low": low,
                "ci95_high": high,
            }
        )
    return pd.DataFrame(rows, columns=columns)  # a header even without labelled volumes


# --------------------------------------------------------------------------------------------
# relevance maps
# --------------------------------------------------------------------------------------------
#: Fewest participants for a group t-map of a one-sample (or paired) test (below: effect maps only; with 2 the t
#: has 1 degree of freedom); see :data:`deeplight_bids.group.inference.MIN_DOF`.
MIN_T_PARTICIPANTS = 3


def correct_only_participant_means(
    runs: Iterable[RunRecord], states: Sequence[str], output_dir: str | os.PathLike[str] | None = None
) -> dict[str, dict[str, tuple[np.ndarray, int]]]:
    """``{state: {subject: (mean map, n volumes)}}`` over correctly decoded volumes of each state.

    A volume counts for state s when ``correct == 1``, ``true_state == s`` and its map
    explains s (``lrp_target == s``, true for every correct volume under both LRP targets).
    The maps are read with :func:`deeplight_bids.readback.load_relevance`, one run and
    state at a time (only those volumes are held in memory).  ``output_dir``: OUTPUT_DIR
    (default: three or four folders above each run's relevance file).
    """
    sums: dict[str, dict[str, tuple[Any, int]]] = {}
    for rec in runs:
        if rec.relevance is None:
            continue
        frame = rec.read()
        if "lrp_target" not in frame.columns:
            continue
        ok = (frame["correct"] == 1) & (frame["lrp_target"] == frame["true_state"])
        sel = frame.loc[ok.fillna(False).astype(bool)]
        if sel.empty:
            continue
        out = output_dir or rec.relevance.parents[3 if rec.entities.get("session") else 2]
        exact = {key: rec.entities.get(key) for key in RUN_ENTITIES if key not in ("subject", "task")}
        for state, rows in sel.groupby("true_state", sort=False):
            img, table = readback.load_relevance(
                out, rec.subject, rec.task, state=state, volumes=rows["volume"].astype(int), filters=exact
            )
            if set(table["source"]) != {rec.relevance.name}:
                raise InputDataError(
                    f"{rec.relevance}: the relevance maps found for this run are "
                    f"{sorted(set(table['source']))}; re-run the participant level."
                )
            per = sums.setdefault(state, {})
            total, n = per.get(rec.subject, (0.0, 0))
            per[rec.subject] = (total + np.asarray(img.dataobj).sum(axis=-1, dtype=np.float64), n + len(table))
    ordered = [s for s in states if s in sums] + sorted(set(sums) - set(states))
    return {s: {sub: (total / n, n) for sub, (total, n) in sorted(sums[s].items())} for s in ordered}


def state_label(state: str) -> str:
    return label_value(state)
