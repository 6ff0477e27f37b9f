"""Resume: which runs are complete for the current settings and inputs.

The predictions sidecar JSON is written last and records a hash of the settings that
produced the run (:func:`settings_hash`) and the identity of its inputs
(:func:`inputs_digest`); a re-run skips runs complete for the same settings and inputs,
and recomputes those made with other settings or from changed inputs, or left unfinished.

The sidecar also records every file the run wrote, with its size and checksum
(:func:`files_record`, :mod:`deeplight_bids.derivatives.integrity`): a run whose outputs do
not match is recomputed (one line per damaged file says which and why); a damaged work-folder
cache is removed and made again from the outputs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deeplight_bids._version import __version__
from deeplight_bids.attribution.methods import parameters_from, published_method, resolve
from deeplight_bids.derivatives import integrity, naming
from deeplight_bids.derivatives.relevance import relevance_outputs_complete, scratch_paths
from deeplight_bids.quality.plausibility import find_reference_files
from deeplight_bids.utils.identity import digest, run_inputs_digest, sha256sum

if TYPE_CHECKING:
    from collections.abc import Mapping

    from deeplight_bids.bids.discover import Run
    from deeplight_bids.config import Config

LOGGER = logging.getLogger("deeplight_bids")


def inputs_digest(run: Run) -> str:
    """Identity of the run's BOLD, mask and events (path, size, mtime, SHA-256): see utils/identity.py."""
    return run_inputs_digest(run)


def settings_hash(
    config: Config,
    weights_sha256: str,
    architecture: str,
    user_state_map: dict[str, Any] | None = None,
    quality_settings: dict[str, Any] | None = None,
    relevance_maps: str | None = None,
    comparison_settings: dict[str, Any] | None = None,
) -> str:
    """16 hex digits identifying the settings that change a run's outputs.

    Settings added after the first release enter the hash only when they differ from
    their default, so outputs made before them keep their hash (and are not recomputed).
    Which settings of :class:`~deeplight_bids.config.Config` must enter it is declared with
    each field (:func:`deeplight_bids.config.output_decisions`; checked by
    ``tests/derivatives/test_settings_hash.py``).

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
    settings: dict[str, Any] = {
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
        references = _reference_digests(c, comparison_settings)
        if references:  # the comparison's settings name the states with a reference map, not the maps themselves
            settings["reference_maps"] = references
    if c.save_tfrecords:  # only when on, likewise: a run finished without its TFRecords is not complete with them
        settings["save_tfrecords"] = True
    maps = relevance_maps or c.relevance_maps
    if maps != "volumes":  # likewise
        settings["relevance_maps"] = maps
    return digest(settings, length=16)


def _attribution_settings(config, architecture):
    """The attribution method and its parameters, or None for the published rule (``--attribution``)."""
    name = config.participant.attribution
    method = resolve(name, architecture, config.participant.lrp_rule)
    if method.name == published_method(architecture, config.participant.lrp_rule):
        return None
    return method.sidecar(parameters_from(config))


def _reference_digests(config, comparison_settings):
    """``{state: SHA-256}`` of the ``--reference-map`` files the comparison reads, or None without them."""
    states = comparison_settings.get("references")
    if not states or config.group.reference_map is None:
        return None

    files = find_reference_files(config.group.reference_map, states)
    return {state: sha256sum(path) for state, path in sorted(files.items())}


#: Keys of a run's record that are work-folder caches (see :func:`run_files`).
CACHE_KEYS = ("cache_volumes", "cache_volumes_json", "cache_sums")


def run_files(outputs: Mapping[str, Path], work_dir: str | os.PathLike[str], label: str) -> dict[str, Path]:
    """``{key: path}`` of every file a run may write: its outputs and its work-folder caches.

    Parameters
    ----------
    outputs : dict
        :func:`deeplight_bids.derivatives.naming.run_outputs`.
    work_dir : path-like
        The work folder.
    label : str
        The run's label (names its relevance sums).
    """
    files = {key: path for key, path in outputs.items() if key != "predictions_json"}
    volumes, record = scratch_paths(work_dir, outputs)
    files.update(cache_volumes=volumes, cache_volumes_json=record, cache_sums=naming.state_sums_output(work_dir, label))
    return files


def files_record(outputs: Mapping[str, Path], config: Config, label: str) -> dict[str, dict[str, Any]]:
    """The ``"Files"`` entry of a run's completion marker: size and checksum of every file it wrote."""
    return integrity.record(
        run_files(outputs, config.inputs.work_dir, label), config.inputs.output_dir, config.inputs.work_dir
    )


#: Verified markers of this process: ``{(path, device, inode, size, mtime): damaged}`` (a marker is
#: rewritten, so its identity changes, whenever its run is recomputed).
_VERIFIED: dict[tuple[str, int, int, int, int], bool] = {}


def verify_run(
    marker: Path, sidecar: Mapping[str, Any], config: Config, label: str, log: logging.Logger = LOGGER
) -> bool:
    """Check the files a finished run recorded; remove damaged caches; True when every output is intact.

    One line per damaged file: an output (the run is recomputed), or a work-folder cache
    (removed: it is made again from the outputs).  In ``--relevance-maps volumes`` the
    per-volume output and its work-folder copy are one file (a hard link): damage to it is
    reported for both, and both are recomputed.

    Parameters
    ----------
    marker : pathlib.Path
        The predictions sidecar.
    sidecar : dict
        Its content.
    config : deeplight_bids.config.Config
    label : str
        The run's label (log lines).
    """
    files = sidecar.get(integrity.FILES_KEY)
    if not isinstance(files, dict):
        return True  # made before records: existence only, as then
    try:
        stat = os.stat(marker)
        memo = (str(marker), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    except OSError:
        memo = None
    if memo is not None and memo in _VERIFIED:
        return _VERIFIED[memo]
    damaged = [
        d
        for d in integrity.verify(files, config.inputs.output_dir, config.inputs.work_dir)
        if not d.cache or not integrity.cache_intact(d.path)  # a sound cache that another job rewrote is kept
    ]
    outputs_ok = not any(not d.cache for d in damaged)
    output_paths = {d.path for d in damaged if not d.cache}
    for damage in damaged:
        if not damage.cache:
            log.warning("%s: %s", label, damage.line("the run is recomputed"))
            continue
        linked = next((p for p in output_paths if integrity.same_inode(p, damage.path)), None)
        if linked is not None:
            log.warning("%s: %s", label, damage.line(f"the same file as {linked.name} (a hard link): both recomputed"))
        elif damage.path.parent.name == "relevance_volumes" and config.participant.relevance_maps != "volumes":
            log.warning("%s: %s", label, damage.line("removed; another --relevance-maps choice runs the network again"))
        else:
            log.warning("%s: %s", label, damage.line("removed; made again from the run's outputs"))
        _remove_cache(damage.path, config.inputs.work_dir)
    if outputs_ok and not _sums_source(files, sidecar, config):
        outputs_ok = False  # no intact per-volume maps to make the relevance sums from: the network pass again
        log.warning(
            "%s: its relevance sums (work folder) are missing or were damaged, and no per-volume maps are kept "
            "to make them from (--relevance-maps %s): the run is recomputed",
            label,
            config.participant.relevance_maps,
        )
    if memo is not None:
        _VERIFIED[memo] = outputs_ok
    return outputs_ok


def _remove_cache(path, work_dir):
    """Remove a damaged cache file (and the record of the per-volume maps with them)."""
    path = Path(path)
    targets = [path]
    if path.parent.name == "relevance_volumes" and path.name.endswith(".nii.gz"):
        targets.append(path.with_name(path.name.replace(".nii.gz", ".json")))
    for target in targets:
        try:
            target.unlink(missing_ok=True)
        except OSError as err:
            LOGGER.debug("could not remove %s: %s", target, err)


def _sums_source(files, sidecar, config):
    """False when the run's relevance sums are gone and no per-volume maps are left to make them from."""
    if not config.participant.lrp:
        return True
    sums = files.get("cache_sums")
    if sums is None or integrity.path_of(sums, config.inputs.output_dir, config.inputs.work_dir).is_file():
        return True
    return any(
        key in files and integrity.path_of(files[key], config.inputs.output_dir, config.inputs.work_dir).is_file()
        for key in ("relevance", "cache_volumes")
    )


def is_complete(
    outputs: Mapping[str, Path],
    config: Config,
    settings: str,
    with_quality: bool,
    run: Run | None = None,
    log: logging.Logger = LOGGER,
) -> bool:
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
    if config.participant.lrp and not relevance_outputs_complete(config.participant.relevance_maps, outputs):
        return False
    if with_quality and not (outputs["faithfulness"].is_file() and outputs["sanity"].is_file()):
        return False
    if (
        config.participant.compare_attributions is not None
        and config.participant.lrp
        and not outputs["attributions"].is_file()
    ):
        return False
    sidecar, reason = integrity.read_marker(marker)
    if sidecar is None:
        log.warning(
            "%s: %s: damaged (%s); the run is recomputed",
            run.label if run is not None else marker.parent,
            marker,
            reason,
        )
        return False
    if sidecar.get("SettingsHash") != settings:
        return False
    if run is not None and sidecar.get("InputsDigest") not in (None, inputs_digest(run)):
        log.info(
            "%s: its BOLD, mask or events file changed since its outputs were made: they are out of date", run.label
        )
        return False
    label = run.label if run is not None else marker.name
    return verify_run(marker, sidecar, config, label, log)
