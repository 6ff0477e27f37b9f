"""``deeplight-bids demo``'s options reach :func:`run_demo` (without running the demo)."""

import inspect
from pathlib import Path

from deeplight_bids.cli import demo


def test_every_demo_option_reaches_run_demo(monkeypatch, tmp_path):
    calls = []
    real = inspect.signature(demo.run_demo)

    def fake_run_demo(*args, **kwargs):
        real.bind(*args, **kwargs)  # only run_demo's own parameters
        calls.append((args, kwargs))
        return {}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    monkeypatch.setattr(demo, "format_report", lambda report: "")
    argv = [str(tmp_path), "--participants", "4", "--volumes", "7", "--epochs", "2", "--batch-size", "3"]
    argv += ["--learning-rate", "0.5", "--signal", "2.5", "--region-radius", "9", "--seed", "5", "--nprocs", "1"]
    argv += ["--mix-same-state", "0.25", "--no-compare"]
    assert demo.run_demo_command(argv) == 0
    assert calls == [
        (
            (Path(tmp_path),),
            {
                "n_participants": 4,
                "n_volumes": 7,
                "epochs": 2,
                "batch_size": 3,
                "learning_rate": 0.5,
                "mix_same_state": 0.25,
                "signal": 2.5,
                "region_radius": 9.0,
                "seed": 5,
                "nprocs": 1,
                "compare": False,
            },
        )
    ]
