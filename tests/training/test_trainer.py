"""The training loop on a tiny RETRO and the real store: learning, determinism, resuming,
RETRO[off], RETRO-fitting, logging."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from retro_platform.errors import ConfigError
from retro_platform.training.checkpoint import checkpoint_path, load_checkpoint
from retro_platform.training.trainer import train

REPO = Path(__file__).resolve().parents[2]
DROPOUT = {"dec_attn_dropout": 0.1, "dec_ff_dropout": 0.1, "enc_ff_dropout": 0.1}


def weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run(s, run_dir: Path, **kwargs):
    model = s.model()
    result = train(model, s.data, s.experiment, run_dir=run_dir, device="cpu", **kwargs)
    return model, result


def test_a_few_steps_reduce_the_loss_and_report_the_loader_share(setup, tmp_path, capsys) -> None:
    s = setup(train={"steps": 30, "log_every": 5, "warmup_steps": 3, "checkpoint_every": 100})
    logged: list[tuple[int, dict]] = []
    model, result = run(s, tmp_path / "run", on_log=lambda step, m: logged.append((step, m)),
                        progress=False)  # fmt: skip
    assert [step for step, _ in logged] == [5, 10, 15, 20, 25, 30]
    losses = [m["train/loss"] for _, m in logged]
    assert losses[-1] < losses[0] - 0.5, losses
    for _, metrics in logged:
        assert set(metrics) == {"train/loss", "train/lr", "train/tokens_per_s",
                                "train/grad_norm", "train/loader_share"}  # fmt: skip
        assert 0 < metrics["train/loader_share"] < 0.3
        assert metrics["train/tokens_per_s"] > 0 and metrics["train/grad_norm"] > 0
    assert logged[-1][1]["train/lr"] == pytest.approx(3e-3 * 0.1, rel=0.05)
    assert result.finished and result.step == 30 and result.start_step == 0
    assert 0 < result.loader_share < 0.3 and result.tokens_per_s > 0
    assert 0.8 * 30 * 4 * 64 <= result.tokens <= 30 * 4 * 64  # padding is not counted
    assert result.checkpoint == checkpoint_path(tmp_path / "run")  # the last step's
    assert load_checkpoint(result.checkpoint)["step"] == 30
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert len(lines) == 6 and "tokens/s" in lines[0] and "eta" in lines[0]


def test_same_seed_same_weights(setup, tmp_path) -> None:
    s = setup(model=DROPOUT, train={"grad_accumulation": 2})
    first, _ = run(s, tmp_path / "a", progress=False)
    second, _ = run(s, tmp_path / "b", progress=False)
    assert weights_equal(first.state_dict(), second.state_dict())
    third, _ = run(setup("other", model=DROPOUT, experiment={"seed": 8}), tmp_path / "c",
                   progress=False)  # fmt: skip
    assert not weights_equal(first.state_dict(), third.state_dict())


def test_a_stopped_run_resumes_to_the_same_weights(setup, tmp_path) -> None:
    s = setup(model=DROPOUT, train={"steps": 8, "grad_accumulation": 2}, eval={"every": 2})
    whole, _ = run(s, tmp_path / "whole", progress=False)

    evaluated: list[int] = []

    def noisy_eval(step: int) -> None:  # an evaluation that draws random numbers
        evaluated.append(step)
        torch.rand(100)

    stopped, first = run(s, tmp_path / "split", stop_after=5, on_eval=noisy_eval, progress=False)
    assert (first.step, first.finished) == (5, False)
    assert load_checkpoint(checkpoint_path(tmp_path / "split"))["step"] == 3  # not 5: "killed"
    assert not weights_equal(stopped.state_dict(), whole.state_dict())
    resumed, second = run(s, tmp_path / "split", on_eval=noisy_eval, progress=False)
    assert (second.start_step, second.step, second.finished) == (3, 8, True)
    assert evaluated == [2, 4, 4, 6, 8]  # step 4 again: it was lost with the kill
    assert weights_equal(resumed.state_dict(), whole.state_dict())

    # a finished run has nothing left to do
    again, third = run(s, tmp_path / "split", progress=False)
    assert (third.start_step, third.step, third.tokens) == (8, 8, 0)
    # but reports the last logged metrics (a run killed in its evaluation records them)
    assert third.metrics == second.metrics and "train/loss" in third.metrics
    assert weights_equal(again.state_dict(), whole.state_dict())


def test_a_resume_between_logs_logs_the_losses_of_an_uninterrupted_run(setup, tmp_path):
    # checkpoints at 3 and 6, logs at 4 and 8: the loss logged at 4 after a resume from 3 is
    # the mean of steps 1-4, as without the stop, not that of step 4 alone
    s = setup(train={"steps": 8, "log_every": 4, "checkpoint_every": 3})
    whole: list[tuple[int, float]] = []
    run(s, tmp_path / "whole", progress=False,
        on_log=lambda step, m: whole.append((step, m["train/loss"])))  # fmt: skip
    split: list[tuple[int, float]] = []
    for stop_after in (5, 7, None):  # stopped after the checkpoints of steps 3 and 6
        run(s, tmp_path / "split", stop_after=stop_after, progress=False,
            on_log=lambda step, m: split.append((step, m["train/loss"])))  # fmt: skip
    assert [step for step, _ in whole] == [4, 8]
    assert sorted(set(split)) == whole  # each step's loss the same in every try


DRIVER = """
import sys, time
from pathlib import Path
from retro_platform.training.trainer import train
from tests.training.helpers import prepare

experiment_file, run_dir, pause_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
s = prepare(experiment_file)

def on_log(step, metrics):
    print("logged", step, flush=True)
    if step == pause_at:
        time.sleep(300)  # the test kills us here

result = train(s.model(), s.data, s.experiment, run_dir=run_dir, device="cpu", on_log=on_log,
               progress=False)
print("done", result.start_step, result.step, flush=True)
"""


def test_a_killed_process_resumes_to_the_same_weights(make_file, tmp_path) -> None:
    from tests.training.helpers import prepare

    path = make_file(model=DROPOUT, train={"steps": 8, "log_every": 1, "checkpoint_every": 3})
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run_dir = tmp_path / "killed"
    command = [sys.executable, str(driver), str(path), str(run_dir)]

    process = subprocess.Popen([*command, "5"], stdout=subprocess.PIPE, text=True, env=env,
                               cwd=REPO)  # fmt: skip
    try:
        for line in process.stdout:
            if line.split() == ["logged", "5"]:
                break
        else:
            pytest.fail("the driver ended before step 5")
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        process.kill()
        process.stdout.close()
    assert load_checkpoint(checkpoint_path(run_dir))["step"] == 3

    finished = subprocess.run([*command, "0"], capture_output=True, text=True, env=env, cwd=REPO,
                              timeout=300)  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "done 3 8" in finished.stdout
    resumed = load_checkpoint(checkpoint_path(run_dir))["model"]

    s = prepare(path)
    whole = s.model()
    train(whole, s.data, s.experiment, run_dir=tmp_path / "whole", device="cpu", progress=False)
    assert weights_equal(resumed, whole.state_dict())


def test_retrieval_off_leaves_the_encoder_untouched(setup, tmp_path) -> None:
    s = setup(train={"neighbours": "none", "steps": 3})
    model = s.model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, s.data, s.experiment, run_dir=tmp_path / "off", device="cpu", progress=False)
    after = model.state_dict()
    assert torch.equal(after["encoder_out.weight"], before["encoder_out.weight"])
    assert not torch.equal(after["to_logits.weight"], before["to_logits.weight"])


def test_retrofit_trains_only_the_retrieval_path_from_a_decoder_checkpoint(setup, tmp_path):
    base = setup("base", train={"neighbours": "none", "steps": 3})
    run(base, tmp_path / "base", progress=False)
    decoder = load_checkpoint(checkpoint_path(tmp_path / "base"))["model"]

    source = str(checkpoint_path(tmp_path / "base"))
    s = setup("fit", train={"retrofit": True, "retrofit_from": source, "steps": 3})
    fresh = s.model().state_dict()
    model, _ = run(s, tmp_path / "fit", progress=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and "token_emb.weight" not in trainable
    state = model.state_dict()
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert not torch.equal(parameter, fresh[name]), name
        else:
            assert torch.equal(state[name], decoder[name]), name

    wrong = setup("wrong", model={"dec_dim": 48}, train={"retrofit": True,
                  "retrofit_from": source, "steps": 3})  # fmt: skip
    with pytest.raises(ConfigError, match="retrofit_from .* same shape"):
        run(wrong, tmp_path / "wrong", progress=False)


def test_eval_callback_every_n_steps_and_a_progress_bar(setup, tmp_path, capsys) -> None:
    s = setup(eval={"every": 2}, train={"steps": 5})
    steps: list[int] = []
    run(s, tmp_path / "run", on_eval=steps.append, progress=True)
    assert steps == [2, 4]
    bar = capsys.readouterr().err
    assert "train: 100%" in bar and "5/5" in bar and "loss=" in bar and "tok_s=" in bar
    assert "step 2/5" not in bar  # a bar, not log lines


def test_bf16_autocast_trains(setup, tmp_path) -> None:
    # on the CPU only when asked for; "auto" means bf16 on CUDA (the same autocast path)
    s = setup(train={"precision": "bf16", "steps": 4})
    _, result = run(s, tmp_path / "run", progress=False)
    assert result.finished and 0 < result.metrics["train/loss"] < 10
    settings = load_checkpoint(result.checkpoint)["settings"]
    assert settings["train.precision"] == "bf16"
