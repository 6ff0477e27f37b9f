"""Do the demo's group contrasts point at the planted regions?  (benchmarks/RESULTS.md, "Group contrasts")

Usage::

    python benchmarks/bench_group_contrasts.py OUTPUT_DIR/deeplight OUTPUT_DIR/reference [--tag TEXT]

Reads the group outputs of ``OUTPUT_DIR/deeplight/group`` (``deeplight-bids ... group`` run
before) and the demo's planted regions (``OUTPUT_DIR/reference/label-<state>_mask.nii.gz``),
and prints one Markdown table row per ``<state>VsOthers`` contrast:

* the share of the contrast map's top 1 % of brain-mask voxels (highest values) inside the
  state's planted region, for the effect map (``stat-effect``) and the z-map (``stat-z``);
* the correction, its z threshold and the surviving voxels (count and share of the brain mask),
  from the z-map's sidecar (``StatisticalModel``);
* the share of the surviving voxels inside the region, and the share of the region that survives.
"""

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

SPACE = "space-MNI152NLin6Asym_res-2"


def top_share(values, region, inside, percent=1.0):
    """Share of the top ``percent`` % of ``inside`` voxels (by value) that lie in ``region``."""
    data = values[inside]
    k = int(np.ceil(percent / 100 * data.size))
    top = np.argsort(-data, kind="stable")[:k]
    return float(region[inside][top].mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="the demo's OUTPUT_DIR/deeplight after the group level")
    parser.add_argument("reference", type=Path, help="the demo's OUTPUT_DIR/reference")
    parser.add_argument("--tag", default="", help="first column of each row (e.g. the settings)")
    args = parser.parse_args(argv)

    from deeplight_bids.group.templates import load_templates

    inside = np.asarray(load_templates().mask.dataobj) > 0
    group = args.output_dir / "group"
    print(
        "| run | contrast | top 1 % in region: effect | top 1 % in region: z | correction | z threshold "
        "| surviving voxels | share of mask | survivors in region | region surviving |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for ref in sorted(args.reference.glob("label-*_mask.nii.gz")):
        label = ref.name.split("label-")[1].split("_")[0]
        region = np.asarray(nib.load(ref).dataobj) > 0
        stem = group / f"task-motor_{SPACE}_contrast-{label}VsOthers"
        effect = np.asarray(nib.load(f"{stem}_stat-effect_statmap.nii.gz").dataobj)
        z = np.asarray(nib.load(f"{stem}_stat-z_statmap.nii.gz").dataobj)
        model = json.loads(Path(f"{stem}_stat-z_statmap.json").read_text())["StatisticalModel"]
        thr = model["Threshold"]
        if model["Correction"] in ("fdr", "fwe-permutation") and model["VoxelsSurviving"]:
            surviving = inside & (z >= thr)
            assert int(surviving.sum()) == model["VoxelsSurviving"], "threshold does not reproduce the count"
            in_region = f"{100 * (surviving & region).sum() / surviving.sum():.1f} %"
            covered = f"{100 * (surviving & region).sum() / region.sum():.1f} %"
        else:
            in_region = covered = "-"
        alpha = f" {'q' if model['Correction'] == 'fdr' else 'alpha'} {model['Alpha']:g}"
        print(
            f"| {args.tag} | {label}VsOthers | {100 * top_share(effect, region, inside):.1f} % "
            f"| {100 * top_share(z, region, inside):.1f} % | {model['Correction']}{alpha} "
            f"| {'-' if thr is None else f'{thr:.2f}'} | {model['VoxelsSurviving']} "
            f"| {100 * model['ShareOfMaskSurviving']:.2f} % | {in_region} | {covered} |"
        )


if __name__ == "__main__":
    main()
