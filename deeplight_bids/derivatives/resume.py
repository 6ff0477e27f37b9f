"""Resume: which runs are complete for the current settings and inputs.

The predictions sidecar JSON is written last and records a hash of the settings that
produced the run (:func:`settings_hash`) and the identity of its inputs
(:func:`inputs_digest`); a re-run skips runs complete for the same settings and inputs,
and recomputes those made with other settings or from changed inputs, or left unfinished.
"""

import hashlib
import json
import logging

from deeplight_bids import __version__
from deeplight_bids.derivatives.relevance import relevance_outputs_complete

LOGGER = logging.getLogger("deeplight_bids")


def inputs_digest(run):
    """Identity of the run's BOLD, mask and events (path, size, mtime, SHA-256): see bids/identity.py."""
    from deeplight_bids.bids.identity import run_inputs_digest

    return run_inputs_digest(run)


def settings_hash(
    config,
    weights_sha256,
    architecture,
    user_state_map=None,
    quality_settings=None,
    relevance_maps=None,
    comparison_settings=None,
):
    """16 hex digits identifying the settings that change a run's outputs.

    Settings added after the first release enter the hash only when they differ from
    their default, so outputs made before them keep their hash (and are not recomputed).

    Parameters
    ----------
    config : deeplight_bids.config.Config
    weights_sha256 : str
    architecture : {"3D", "2D"}
    user_state_map : dict or None
        ``--state-map``.
    quality_settings : dict or None
        :meth:`RunQuality.settings` when ``--quality`` is on.
    relevance_maps : str or None
        ``--relevance-maps`` to hash instead of the config's (``"volumes"``: the settings of the
        network pass, which every choice shares: the work folder's per-volume maps are keyed by it).
    comparison_settings : dict or None
        :meth:`AttributionComparison.settings` when ``--compare-attributions`` is on.
    """
    c = config
    settings = {
        "weights": weights_sha256,
        "lrp": c.lrp,
        "target": c.lrp_target,
        "fwhm": c.smoothing_fwhm,
        "high_pass": c.high_pass,
        "version": __version__,
        "state_map": user_state_map,
        "relevance_masked": True,
    }
    if c.allow_approximate_space:  # only when set, so hashes of earlier outputs stay valid
        settings["allow_approximate_space"] = True
    if architecture == "2D":
        settings["lrp_rule"] = c.lrp_rule
    attribution = _attribution_settings(c, architecture)
    if attribution is not None:  # only another method than the published rule, so earlier hashes stay valid
        settings["attribution"] = attribution
    if quality_settings is not None:  # only when on, so outputs made before --quality keep their hash
        settings["quality"] = quality_settings
    if comparison_settings is not None:  # likewise
        settings["compare_attributions"] = comparison_settings
    maps = relevance_maps or c.relevance_maps
    if maps != "volumes":  # likewise
        settings["relevance_maps"] = maps
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _attribution_settings(config, architecture):
    """The attribution method and its parameters, or None for the published rule (``--attribution``)."""
    from deeplight_bids.attribution.methods import parameters_from, published_method, resolve

    name = getattr(config, "attribution", "published")
    method = resolve(name, architecture, config.lrp_rule)
    if method.name == published_method(architecture, config.lrp_rule):
        return None
    return method.sidecar(parameters_from(config))


def is_complete(outputs, config, settings, with_quality, run=None, log=LOGGER):
    """True when a previous run with the same settings (and, given ``run``, the same inputs) finished all outputs.

    Parameters
    ----------
    outputs : dict
        :func:`deeplight_bids.derivatives.naming.run_outputs`.
    config : deeplight_bids.config.Config
        ``lrp`` and ``relevance_maps`` say which outputs a finished run has.
    settings : str
        :func:`settings_hash` of the current settings.
    with_quality : bool
        The quality tables are expected too.
    run : deeplight_bids.bids.discover.Run or None
        Given, the inputs must be those the outputs were made from.
    """
    marker = outputs["predictions_json"]
    if not marker.is_file() or not outputs["predictions"].is_file():
        return False
    if config.lrp and not relevance_outputs_complete(config.relevance_maps, outputs):
        return False
    if with_quality and not (outputs["faithfulness"].is_file() and outputs["sanity"].is_file()):
        return False
    if (
        getattr(config, "compare_attributions", None) is not None
        and config.lrp
        and not outputs["attributions"].is_file()
    ):
        return False
    try:
        sidecar = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if sidecar.get("SettingsHash") != settings:
        return False
    if run is not None and sidecar.get("InputsDigest") not in (None, inputs_digest(run)):
        log.info(
            "%s: its BOLD, mask or events file changed since its outputs were made: they are out of date", run.label
        )
        return False
    return True
