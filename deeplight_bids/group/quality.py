"""Group-level quality tables: significance of decoding, faithfulness and sanity across
participants, plausibility against ``--reference-map``.

Called once per model and task by :func:`deeplight_bids.group.level.compute_group_outputs`;
every table is a TSV with a JSON sidecar under the model's group folder, and its path
goes into the group manifest (read by the report, :mod:`.report_section`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from deeplight_bids.derivatives.sidecars import described
from deeplight_bids.group.stats import t_interval
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE
from deeplight_bids.quality import compare, faithfulness, plausibility, sanity, significance
from deeplight_bids.utils.tsv import read_tsv

if TYPE_CHECKING:
    from deeplight_bids.config import Config
    from deeplight_bids.group.stats import MapRecord, RunRecord
    from deeplight_bids.group.templates import Templates

LOGGER = logging.getLogger("deeplight_bids")

CURVE_COLUMNS = described(
    {
        "state": "explained state (LRP target)",
        "order": "order of removal ('relevance': most relevant first; 'random')",
        "fraction": "share of in-mask voxels set to 0",
        "n_participants": "participants with volumes of this state",
        "n_volumes": "volumes, all participants",
        "logit_drop_mean": {
            "Description": "mean over participants of the participant's mean drop of the explained logit",
            "Units": "arbitrary",
        },
        "logit_drop_sd": "SD over participants (ddof = 1)",
        "ci95_low": "lower end of the t-based 95% interval of logit_drop_mean",
        "ci95_high": "upper end of the t-based 95% interval of logit_drop_mean",
        "decision_holds": "share of the volumes (pooled) whose decision holds after removal",
    }
)
PARTICIPANT_QUALITY_COLUMNS = described(
    {
        "participant_id": "participant",
        "n_runs": "runs with quality measures",
        "area_between_curves": (
            "mean over runs of the area between the random- and relevance-order "
            "deletion curves (mean logit difference; > 0: the relevance order "
            "lowers the explained logit faster)"
        ),
        "aopc_relevance": "mean over runs of the AOPC (mean logit drop) removing most relevant first",
        "aopc_random": "mean over runs of the AOPC removing in random order",
        "median_spearman": (
            "median over the run's volumes of the Spearman correlation with the "
            "randomised model's maps (mean over runs)"
        ),
        "median_ssim": "median SSIM with the randomised model's maps (mean over runs)",
        "high_similarity": {
            "Description": f"1 if a run's maps resemble the randomised model's (a median above {sanity.HIGH_SIMILARITY})",
            "Levels": {"0": "no", "1": "yes"},
        },
    }
)


def _quality_tsv(rec, kind):
    path = rec.predictions.with_name(rec.predictions.name.replace("desc-predictions", f"desc-{kind}"))
    return path if path.is_file() else None


def _comparison_tsv(rec):
    """The run's ``--compare-attributions`` table, or None."""
    name = rec.predictions.name.replace("desc-predictions_timeseries", "desc-attributions_summary")
    path = rec.predictions.with_name(name)
    return path if path.is_file() and path != rec.predictions else None


def faithfulness_curves(runs: Iterable[RunRecord]) -> pd.DataFrame:
    """Mean deletion curves per state and order with 95 % intervals over participants."""
    frames = []
    for rec in runs:
        if not rec.metadata.get("Quality"):
            continue  # processed without --quality: a table left by an earlier run is not this run's
        path = _quality_tsv(rec, "faithfulness")
        if path is not None:
            frames.append(read_tsv(path).assign(participant=rec.subject))
    if not frames:
        return pd.DataFrame(columns=list(CURVE_COLUMNS))
    table = pd.concat(frames, ignore_index=True)
    per = table.groupby(["state", "order", "fraction", "participant"])["logit_drop"].mean().reset_index()
    rows = []
    for (state, order, fraction), group in per.groupby(["state", "order", "fraction"]):
        n, mean, sd, low, high = t_interval(group["logit_drop"])
        sel = table[(table["state"] == state) & (table["order"] == order) & (table["fraction"] == fraction)]
        rows.append(
            {
                "state": state,
                "order": order,
                "fraction": fraction,
                "n_participants": n,
                "n_volumes": int(sel["volume"].count()),
                "logit_drop_mean": mean,
                "logit_drop_sd": sd,
                "ci95_low": low,
                "ci95_high": high,
                "decision_holds": float(sel["decision_holds"].mean()),
            }
        )
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def participant_quality(runs: Iterable[RunRecord]) -> pd.DataFrame:
    """Per participant: faithfulness and sanity summaries from the runs' predictions sidecars."""
    per: dict[str, list[dict[str, Any]]] = {}
    for rec in runs:
        quality = rec.metadata.get("Quality")  # the predictions sidecar
        if quality:
            per.setdefault(rec.subject, []).append(quality)
    rows = []
    for subject, items in sorted(per.items()):

        def mean(section, key, items=items):
            vals = [q[section].get(key) for q in items if q.get(section) and q[section].get(key) is not None]
            vals = [v for v in vals if np.isfinite(v)]
            return float(np.mean(vals)) if vals else np.nan

        rows.append(
            {
                "participant_id": f"sub-{subject}",
                "n_runs": len(items),
                "area_between_curves": mean("Faithfulness", "area_between_curves"),
                "aopc_relevance": mean("Faithfulness", "aopc_relevance"),
                "aopc_random": mean("Faithfulness", "aopc_random"),
                "median_spearman": mean("Sanity", "median_spearman"),
                "median_ssim": mean("Sanity", "median_ssim"),
                "high_similarity": int(any(q.get("Sanity", {}).get("high_similarity") for q in items)),
            }
        )
    return pd.DataFrame(rows, columns=list(PARTICIPANT_QUALITY_COLUMNS))


def plausibility_for(
    config: Config, maps: Sequence[MapRecord], templates: Templates
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Plausibility table of the participant mean maps of one task against ``config.group.reference_map``."""
    import nibabel as nib

    reference_map = config.group.reference_map
    if reference_map is None:
        raise ValueError("plausibility_for needs --reference-map (config.group.reference_map)")
    states = sorted({m.state for m in maps})
    files = plausibility.find_reference_files(reference_map, states)
    references = {s: plausibility.load_reference(f, REFERENCE_SHAPE, REFERENCE_AFFINE) for s, f in files.items()}
    brain = np.asarray(templates.mask.dataobj) > 0
    loaded = [
        # nib.load() is typed as any image format; the mean maps are NIfTI images, which have dataobj
        (m.subject, m.state, np.asarray(nib.load(m.path).dataobj, dtype=np.float32))  # type: ignore[attr-defined]
        for m in maps
        if m.state in references
    ]
    table = plausibility.plausibility_table(loaded, references, brain, config.group.reference_top_percent)
    return table, {s: str(f) for s, f in files.items()}


def write_quality_tables(
    config: Config,
    tables: Any,  # group.level.GroupTables (group.level imports this module: no import back)
    runs: Sequence[RunRecord],
    maps: Sequence[MapRecord],
    templates: Templates,
) -> dict[str, str]:
    """Write the quality tables of one model and task; returns manifest entries (relative paths).

    Parameters
    ----------
    config : deeplight_bids.config.Config
    tables : deeplight_bids.group.level.GroupTables
        Writer of the model's group tables for the task (folder, task, shared sidecar fields).
    runs : list of deeplight_bids.group.stats.RunRecord
    maps : list of deeplight_bids.group.stats.MapRecord
    templates : deeplight_bids.group.templates.Templates

    Returns
    -------
    dict
        ``significance``, ``significance_group`` and, when present, ``faithfulness``,
        ``quality_participants``, ``attributions`` (the pooled ``--compare-attributions`` tables),
        ``plausibility`` -> path relative to ``output_dir``.
    """
    entry: dict[str, str] = {}
    alpha = 0.05
    perms = int(config.group.significance_permutations)
    table = significance.participant_table(significance.runs_by_participant(runs), perms, seed=config.seed, alpha=alpha)
    fields: dict[str, Any] = {"Permutations": perms, "Seed": config.seed, "Alpha": alpha}
    entry["significance"] = tables.write("significance", table, significance.PARTICIPANT_COLUMNS, **fields)
    group_test = significance.group_test(table, alpha)
    entry["significance_group"] = tables.write("significancegroup", group_test, significance.GROUP_COLUMNS)

    # Faithfulness and sanity exist only for runs processed with the quality measures.
    curves = faithfulness_curves(runs)
    if len(curves):
        fractions = list(faithfulness.FRACTIONS)
        entry["faithfulness"] = tables.write("faithfulness", curves, CURVE_COLUMNS, Fractions=fractions)
    quality = participant_quality(runs)
    if len(quality):
        entry["quality_participants"] = tables.write("quality", quality, PARTICIPANT_QUALITY_COLUMNS)
    compared = [read_tsv(path) for path in (_comparison_tsv(rec) for rec in runs) if path is not None]
    if compared:
        entry["attributions"] = tables.write(
            "attributions",
            compare.pool(compared),
            compare.POOLED_COLUMNS,
            Criteria={
                "faithfulness": f"deletion_area_ratio >= {compare.FAITHFUL_SHARE}",
                "randomisation": f"randomisation_spearman <= {compare.RANDOM_SPEARMAN_MAX}",
                "class_sensitivity": f"class_sensitivity_spearman <= {compare.CLASS_SPEARMAN_MAX}",
            },
        )
    if config.group.reference_map is not None and maps:
        table, files = plausibility_for(config, maps, templates)
        entry["plausibility"] = tables.write(
            "plausibility",
            table,
            plausibility.COLUMNS,
            ReferenceFiles=files,
            ReferenceTopPercent=config.group.reference_top_percent,
            BrainMask=templates.description,
        )
    return entry
