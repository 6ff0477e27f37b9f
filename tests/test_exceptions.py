"""The exit code of each user-facing error class: named in the class header, inherited otherwise."""

import pytest

from deeplight_bids import exceptions as ex


@pytest.mark.parametrize(
    "cls, code",
    [
        (ex.DeepLightBidsError, ex.EXIT_INTERNAL),
        (ex.UsageError, ex.EXIT_USAGE),
        (ex.InputDataError, ex.EXIT_INPUT),
        (ex.NoRunsFoundError, ex.EXIT_INPUT),
        (ex.ImageError, ex.EXIT_INPUT),
        (ex.EventsError, ex.EXIT_INPUT),
        (ex.MetadataError, ex.EXIT_INPUT),
        (ex.WeightsError, ex.EXIT_WEIGHTS),
        (ex.OutputError, ex.EXIT_OUTPUT),
    ],
)
def test_exit_code_of_each_error(cls, code):
    assert cls.exit_code == code
    assert cls("x").exit_code == code


def test_a_subclass_elsewhere_keeps_or_names_its_code():
    class Inherits(ex.WeightsError):
        pass

    class Names(ex.InputDataError, exit_code=ex.EXIT_OUTPUT):
        pass

    assert Inherits.exit_code == ex.EXIT_WEIGHTS
    assert Names.exit_code == ex.EXIT_OUTPUT and ex.InputDataError.exit_code == ex.EXIT_INPUT


def test_message_is_one_line():
    assert str(ex.UsageError("--epochs:\n  must be\tpositive")) == "--epochs: must be positive"
