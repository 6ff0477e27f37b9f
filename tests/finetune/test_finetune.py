"""``group --finetune`` on generated data: held-out accuracy, outputs, resume, comparison, bad input.

Fast recipe: 2D-DeepLight with the published (real) pretrained body frozen and a new
output layer (``--freeze-body``: body features once per volume, then seconds per epoch).
The full-network path is exercised with 3D-DeepLight initialised from an ``.hdf5`` written
in the published tf.keras 2.x layout (the real file is not available offline).
"""

import json

import numpy as np
import pandas as pd
import pytest

from deeplight_bids.cli.main import run as cli

from .conftest import STATES, finetune_argv

FAST = ["--architecture", "2D", "--freeze-body", "--epochs", "8", "--learning-rate", "1e-2", "--cv-folds", "2"]


class Interrupt(Exception):
    pass


def _interrupt_after(n_epochs):
    import keras

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 >= n_epochs:
                raise Interrupt(f"simulated interruption after epoch {epoch + 1}")

    return Stop()


@pytest.fixture(scope="module")
def cv_out(ft_dataset, ft_work, weights_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft_out")
    assert cli(finetune_argv(ft_dataset, out, ft_work, *FAST)) == 0
    return out


def test_heldout_accuracy_far_above_chance(cv_out):
    folder = cv_out / "models" / "finetune-2D-pretrained-frozen"
    summary = json.loads((folder / "finetune-2D-pretrained-frozen_desc-heldout_summary.json").read_text())
    assert summary["states"] == list(STATES)
    assert summary["heldout_accuracy_pooled"] >= 0.6, summary["participants"]  # chance 1/3
    preds = pd.read_csv(folder / "finetune-2D-pretrained-frozen_desc-heldout_predictions.tsv", sep="\t")
    # every participant predicted, each volume once, by the model of a fold that never saw it
    assert sorted(preds["participant_id"].unique()) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert not preds.duplicated(["participant_id", "run", "volume"]).any()
    for fold, part in preds.groupby("fold"):
        card = json.loads((folder / fold / f"finetune-2D-pretrained-frozen_{fold}.json").read_text())
        trained = {f"sub-{p}" for p in card["training_participants"]}
        assert not trained & set(part["participant_id"])
        assert (part["training_participant"] == 0).all()


def test_linear_baseline_beside_deeplight(cv_out):
    """The linear baseline: the same held-out participants and volumes per fold, both reported, a paired test."""
    folder = cv_out / "models" / "finetune-2D-pretrained-frozen"
    summary = json.loads((folder / "finetune-2D-pretrained-frozen_desc-heldout_summary.json").read_text())
    linear = summary["linear_baseline"]
    preds = pd.read_csv(folder / "finetune-2D-pretrained-frozen_desc-heldout_predictions.tsv", sep="\t")
    assert preds["linear_predicted_state"].isin(STATES).all()
    assert (preds["linear_correct"] == (preds["linear_predicted_state"] == preds["true_state"])).all()
    assert linear["heldout_accuracy_pooled"] == pytest.approx(preds["linear_correct"].mean())
    assert linear["deeplight_heldout_accuracy_pooled"] == pytest.approx(summary["heldout_accuracy_pooled"])
    assert linear["heldout_accuracy_pooled"] >= 0.6  # the planted regions are easy for a linear decoder (chance 1/3)
    for fold, report in zip(linear["folds"], summary["folds"]):
        assert fold["heldout_participants"] == report["heldout_participants"]
        assert fold["n_volumes"] == report["heldout_volumes"]
        card = json.loads((folder / fold["fold"] / f"finetune-2D-pretrained-frozen_{fold['fold']}.json").read_text())
        assert card["linear_baseline"]["heldout_accuracy"] == fold["accuracy_linear"]
        assert card["metrics"]["heldout_accuracy"] == fold["accuracy_deeplight"]
        weights = sorted((folder / fold["fold"]).glob("*_stat-weight_desc-linear_statmap.nii.gz"))
        assert len(weights) == len(STATES)
    test = linear["paired_test_accuracy"]
    assert test["n_folds"] == 2 and test["exact"] and test["p_value"] in (0.5, 1.0)  # 2 folds: p >= 0.5
    table = pd.read_csv(folder / "finetune-2D-pretrained-frozen_desc-linear_summary.tsv", sep="\t")
    assert list(table["level"]) == ["fold", "fold"] + ["participant"] * 4 + ["pooled"]
    assert linear["seconds_linear"] > 0 and linear["cost_ratio"] == pytest.approx(
        linear["seconds_linear"] / linear["seconds_deeplight_fit"], rel=1e-3
    )


def test_model_folder_and_card(cv_out):
    fold = cv_out / "models" / "finetune-2D-pretrained-frozen" / "fold-1"
    card = json.loads((fold / "finetune-2D-pretrained-frozen_fold-1.json").read_text())
    for key in (
        "architecture",
        "init",
        "states",
        "preprocessing",
        "training_participants",
        "validation_participants",
        "seed",
        "metrics",
        "software",
        "inputs",
        "init_weights",
    ):
        assert key in card, key
    assert card["architecture"] == "2D" and card["init"] == "pretrained" and card["states"] == list(STATES)
    assert card["init_weights"]["sha256"].startswith("d1070ea1")
    assert len(card["inputs"]) == 2 and len(card["inputs"][0]["bold_sha256"]) == 64
    assert {"tensorflow", "keras", "deeplight_bids"} <= set(card["software"])
    assert "batch_norm_statistics" in card["training"]
    history = pd.read_csv(fold / "finetune-2D-pretrained-frozen_fold-1_history.tsv", sep="\t")
    assert history["epoch"].tolist() == list(range(1, 9)) and {"loss", "accuracy"} <= set(history)
    assert (fold / "finetune-2D-pretrained-frozen_fold-1_learningcurve.png").stat().st_size > 1000
    assert (fold / "finetune-2D-pretrained-frozen_fold-1.keras").is_file()


def test_participant_level_marks_training_participants(cv_out, ft_dataset, ft_work):
    weights = cv_out / "models" / "finetune-2D-pretrained-frozen" / "fold-1"
    card = json.loads(
        (weights / "finetune-2D-pretrained-frozen_fold-1.json").read_text()
    )  # (beside: the linear baseline's)
    out = cv_out / "decoded"
    subjects = [card["training_participants"][0], card["heldout_participants"][0]]
    argv = [
        str(ft_dataset.bids_dir),
        str(out),
        "participant",
        "--weights",
        str(weights),
        "--architecture",
        "2D",
        "--no-lrp",
        "--skip-bids-validation",
        "--nprocs",
        "2",
        "-w",
        str(ft_work / "participant"),
        "--participant-label",
        *subjects,
    ]
    assert cli(argv) == 0
    for sub in subjects:
        tsv = next(out.rglob(f"sub-{sub}_*desc-predictions_timeseries.tsv"))
        frame = pd.read_csv(tsv, sep="\t")
        assert frame["training_participant"].nunique() == 1
        assert frame["training_participant"].iloc[0] == int(sub in card["training_participants"])


def test_scratch_vs_pretrained_comparison(cv_out, ft_dataset, ft_work):
    argv = finetune_argv(ft_dataset, cv_out, ft_work, *FAST, "--init", "scratch")
    assert cli(argv) == 0
    table = pd.read_csv(cv_out / "group" / "finetune-comparison_arch-2D_frozen.tsv", sep="\t")
    assert table["fold"].tolist() == ["fold-1", "fold-2", "all"]
    assert {"accuracy_scratch", "accuracy_pretrained", "difference"} <= set(table)
    sidecar = json.loads((cv_out / "group" / "finetune-comparison_arch-2D_frozen.json").read_text())
    assert sidecar["models"] == {"scratch": "finetune-2D-scratch-frozen", "pretrained": "finetune-2D-pretrained-frozen"}
    # the group report shows the fine-tuned models and the comparison side by side
    from deeplight_bids.group.report import finetune_section

    section = finetune_section(cv_out)
    assert "finetune-2D-scratch-frozen" in section and "finetune-2D-pretrained-frozen" in section
    assert "Scratch vs pretrained: arch-2D_frozen" in section
    all_row = table[table["fold"] == "all"].iloc[0]
    assert f"{all_row['accuracy_scratch']:.3f}" in section and f"{all_row['difference']:.3f}" in section
    assert finetune_section(ft_work) == ""


def test_interrupted_run_resumes_from_checkpoint(ft_dataset, ft_work, weights_dir, tmp_path):
    from deeplight_bids.config import Config
    from deeplight_bids.workflows.finetune import run_finetune

    config = Config(
        bids_dir=ft_dataset.bids_dir,
        output_dir=tmp_path,
        work_dir=ft_work,
        nprocs=2,
        architecture="2D",
        finetune=True,
        freeze_body=True,
        epochs=3,
        learning_rate=1e-2,
        val_participants=("04",),
        model_name="resume",
    )
    with pytest.raises(Interrupt):
        run_finetune(config, callbacks=[_interrupt_after(1)])
    state = json.loads((ft_work / "finetune" / "resume" / "single" / "training_state.json").read_text())
    assert state["epoch"] == 1
    assert run_finetune(config) == 0
    card = json.loads((tmp_path / "models" / "resume" / "resume.json").read_text())
    assert card["metrics"]["resumed_from_epoch"] == 1 and card["metrics"]["epochs_done"] == 3
    history = pd.read_csv(tmp_path / "models" / "resume" / "resume_history.tsv", sep="\t")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert card["training_participants"] == ["01", "02", "03"] and card["validation_participants"] == ["04"]


def test_fit_resumable_full_model(tmp_path):
    """The checkpoint holds model and optimizer: interrupted + resumed == trained straight through."""
    import keras

    from deeplight_bids.models.input_pipeline import make_array_dataset
    from deeplight_bids.models.train import fit_resumable

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)

    def build():
        keras.utils.set_random_seed(1)
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])

    def data(start):
        return make_array_dataset(x, y, 8, seed=2, start_epoch=start)

    straight, _ = fit_resumable(build, None, tmp_path / "a", "fp", 4, 1e-2, make_train_data=data)
    with pytest.raises(Interrupt):
        fit_resumable(build, None, tmp_path / "b", "fp", 4, 1e-2, make_train_data=data, callbacks=[_interrupt_after(2)])
    resumed, state = fit_resumable(build, None, tmp_path / "b", "fp", 4, 1e-2, make_train_data=data)
    assert state["resumed_from"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_3d_full_network_from_published_layout_hdf5(ft_dataset, ft_work, tmp_path):
    """--init pretrained with a 3D .hdf5 in the published layout: body copied, head new, trains end to end."""
    import h5py

    from deeplight_bids.models.three import build_3d_deeplight
    from deeplight_bids.models.weights import load_deeplight
    from tests.models.legacy_h5 import randomise_weights, write_keras2_whole_model_h5

    h5 = tmp_path / "legacy3d.hdf5"
    write_keras2_whole_model_h5(randomise_weights(build_3d_deeplight(16), seed=4), h5)
    out = tmp_path / "out"
    argv = finetune_argv(
        ft_dataset,
        out,
        ft_work,
        "--architecture",
        "3D",
        "--weights",
        str(h5),
        "--epochs",
        "1",
        "--participant-label",
        "01",
        "02",
        "--states",
        "MOTOR_lh",
        "MOTOR_rh",
        "--val-participants",
        "02",
        "--model-name",
        "h5",
    )
    assert cli(argv) == 0
    fitted = load_deeplight(out / "models" / "h5", "3D")
    assert fitted.states == ("MOTOR_lh", "MOTOR_rh") and fitted.card["init"] == "pretrained"
    assert fitted.card["training_participants"] == ["01"]
    with h5py.File(h5) as f:
        assert fitted.model.get_layer("conv_13").get_weights()[0].shape[-1] == 2
        assert f["model_weights"].attrs["layer_names"][0].decode().startswith("keras2_")
    history = pd.read_csv(out / "models" / "h5" / "h5_history.tsv", sep="\t")
    assert history["epoch"].tolist() == [1] and {"val_loss", "val_accuracy"} <= set(history)


@pytest.mark.parametrize(
    "extra, code, words",
    [
        (["--participant-label", "01"], 3, "at least 2 participants"),
        (["--states", "MOTOR_lh", "MOTOR_lf"], 3, "MOTOR_lf have no labelled volumes"),
    ],
)
def test_bad_input_one_line_errors(ft_dataset, ft_work, tmp_path, capsys, extra, code, words):
    assert cli(finetune_argv(ft_dataset, tmp_path, ft_work, "--architecture", "2D", *extra)) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("deeplight-bids: error:") and words in err[-1]


def test_model_card_states_must_match(cv_out, ft_dataset, ft_work, capsys):
    argv = finetune_argv(
        ft_dataset,
        cv_out,
        ft_work,
        *FAST,
        "--states",
        "MOTOR_lh",
        "MOTOR_rh",
        "--model-name",
        "finetune-2D-pretrained-frozen",
    )
    assert cli(argv) == 4
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("deeplight-bids: error:") and "model card lists" in err
