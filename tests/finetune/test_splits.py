"""Participant splits of --finetune: a held-out participant never chooses anything (issue 13)."""

import pytest

from deeplight_bids.config import Config
from deeplight_bids.exceptions import UsageError
from deeplight_bids.workflows.finetune import FinetuneJob


def _job(tmp_path, participants, **options):
    config = Config(
        bids_dir=tmp_path,
        output_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        analysis_level="group",
        finetune=True,
        **options,
    )
    job = FinetuneJob(config)
    job.participants = list(participants)  # what load_data finds
    return job


PARTS = ["01", "02", "03", "04", "05"]


def test_one_split_with_early_stopping_validates_on_a_training_participant(tmp_path):
    [(_, train, val, held)] = _job(tmp_path, PARTS, early_stopping_patience=2, seed=3).splits()
    assert held == ["05"]  # the last 20 %
    assert len(val) == 1 and val[0] not in held and val[0] in PARTS[:-1]
    assert not set(train) & set(val) and not set(train) & set(held)
    assert sorted(train + val + held) == PARTS
    # seeded: the same validation participant every time
    assert _job(tmp_path, PARTS, early_stopping_patience=2, seed=3).splits()[0][2] == val


def test_one_split_with_given_held_out_participants(tmp_path):
    [(_, train, val, held)] = _job(tmp_path, PARTS, early_stopping_patience=1, val_participants=("02",)).splits()
    assert held == ["02"] and val != held and "02" not in train + val


def test_one_split_without_early_stopping_holds_out_only(tmp_path):
    """Without early stopping the held-out loss is only logged: nothing is chosen with it."""
    [(_, train, val, held)] = _job(tmp_path, PARTS).splits()
    assert held == ["05"] and val == held and "05" not in train


def test_too_few_participants_for_a_separate_validation_participant(tmp_path):
    with pytest.raises(UsageError, match="early-stopping-patience"):
        _job(tmp_path, ["01", "02"], early_stopping_patience=1).splits()


def test_cv_folds_never_validate_on_the_held_out_fold(tmp_path):
    for fold, train, val, held in _job(tmp_path, PARTS, cv_folds=5, early_stopping_patience=1).splits():
        assert not set(val) & set(held) and not set(train) & set(held), fold
