"""The dataset's own first-level GLM beside the relevance maps (issue 26; docs/glm.rst).

* :mod:`deeplight_bids.glm.design`: events and the label plan -> the states of a run's design;
* :mod:`deeplight_bids.glm.first_level`: the GLM of one run (nilearn, in voxel chunks);
* :mod:`deeplight_bids.glm.agreement`: Pearson r and top-k % Dice of a relevance map and a t-map;
* :mod:`deeplight_bids.glm.stage`: the participant level's GLM stage (maps, fixed effects, agreement table);
* :mod:`deeplight_bids.group.glm`: the pooled agreement table of the group level;
* :mod:`deeplight_bids.group.glm_section`: the report's part.
"""
