import glob
import io
import os

import pytest

from vidsift.model.logging_utils import TrainProgress, format_duration
from vidsift.model.train import load_recipe, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "recipes", "train", "tiny.toml")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_tiny_run_writes_tensorboard_scalars_and_plain_progress_lines(shards, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_recipe(
        TINY,
        [
            "model_args={depth = 1, patch = [1, 4, 4]}",
            "frames=4",
            "height=16",
            "width=16",
            "batch_size=2",
            "steps=4",
            "warmup=1",
            "log_every=2",
            "eval_every=2",
            "save_every=0",
            "val_clips=2",
            'log="tensorboard"',
        ],
    )
    cfg.data, cfg.out = shards, str(tmp_path / "run")
    train(cfg)

    # pytest's captured stdout is no terminal: plain lines, one per log step, each with an ETA, no redraws.
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ") and "/4 " in line]
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"]
    assert all(" eta " in line and " loss " in line and " tok/s " in line for line in lines)
    assert "\r" not in out

    assert glob.glob(os.path.join(cfg.out, "tb", "events.out.tfevents.*"))
    acc = EventAccumulator(os.path.join(cfg.out, "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "val/loss"} <= tags
    assert "train/mfu" not in tags  # no MFU on CPU: None values are not written
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("val/loss")] == [2, 4]
    assert all(e.value > 0 for e in acc.Scalars("train/loss"))


def test_live_line_on_a_terminal_shows_step_loss_lr_tokens_and_eta():
    tty = FakeTTY()
    progress = TrainProgress(total_steps=10, stream=tty)
    assert progress.live
    progress.update(1, loss=0.5, lr=1e-3, tokens_per_s=1234.0)
    progress.write("step 1/10 loss 0.5000")
    progress.update(10, loss=0.25, lr=1e-4, tokens_per_s=2000.0)
    progress.close()
    text = tty.getvalue()
    live = text.split("\r\x1b[2K")[-1]  # the last redraw: the final state
    assert live.startswith("step 10/10 [####################] 100% loss 0.2500 lr 1.00e-04 tok/s 2,000")
    assert "eta 0s" in live
    # The permanent line clears the live line first and ends with a newline, so it stays above it.
    assert "\r\x1b[2Kstep 1/10 loss 0.5000 eta " in text
    assert text.endswith("\n")


def test_non_terminal_stream_gets_no_redraws_and_bad_kind_is_an_error():
    plain = io.StringIO()
    progress = TrainProgress(total_steps=4, stream=plain)
    for step in range(1, 5):
        progress.update(step, loss=1.0 / step)
    progress.write("step 4/4 loss 0.2500")
    progress.close()
    assert plain.getvalue() == "step 4/4 loss 0.2500 eta 0s\n"
    with pytest.raises(ValueError, match="csv, tensorboard"):
        TrainProgress(total_steps=4, log="wandb")


def test_format_duration():
    assert format_duration(42.4) == "42s"
    assert format_duration(185) == "3m05s"
    assert format_duration(3720) == "1h02m"
    assert format_duration(float("inf")) == "?"
