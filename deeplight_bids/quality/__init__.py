"""How good are the relevance maps and the decoding: faithfulness, sanity, plausibility, significance.

* :mod:`.faithfulness` - deletion curves (most relevant voxels first vs a random order);
* :mod:`.sanity` - model-parameter randomisation check (Adebayo et al. 2018);
* :mod:`.run_quality` - both per run, written beside the run's outputs (participant level);
* :mod:`.significance` - permutation and binomial tests of decoding accuracy (group level);
* :mod:`.plausibility` - relevance against reference maps (group level).
"""
