"""Resumable training: a run stopped at any step continues to exactly the bits of an uninterrupted one.

In-process: interrupt (KeyboardInterrupt or another error) from the progress callback, resume from the saved
state, compare the weights' SHA-256 and the history with an uninterrupted run; corrupted, foreign and
half-written states are ignored. The state on disk is safetensors + JSON only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from mechcheck.spec import TrainSpec
from mechcheck.train import Checkpoint, train
from mechcheck.train_state import checkpoint_every

ARCH = {"n_layer": 2, "n_head": 2, "n_embd": 32}
STEPS = 40


@pytest.fixture(scope="module")
def task():
    from mechcheck.tasks.cdm import make_cdm

    return make_cdm(vocab="words", max_number=9)


def _model(task, **arch):
    import torch

    from mechcheck.models import build_gpt2

    torch.manual_seed(0)
    return build_gpt2({**ARCH, **arch}, task.vocab_size, task.seq_len + 2)


def _sha(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


SPECS = {
    "answer": TrainSpec(steps=STEPS, batch_size=32, lr=3e-3, warmup_steps=5, eval_every=10),
    # the other sampling branch (a fixed training set) and the other loss
    "lm-fixed-set": TrainSpec(steps=STEPS, batch_size=16, lr=3e-3, loss="lm", n_train=200, eval_every=10),
}
#: dropout consumes torch's RNG inside each step: resuming must restore it too
ARCHS = {"no-dropout": {}, "dropout": {"resid_pdrop": 0.1, "attn_pdrop": 0.1}}

_UNINTERRUPTED: dict[tuple[str, str], tuple[str, dict]] = {}


def _uninterrupted(task, spec_name: str, arch_name: str) -> tuple[str, dict]:
    """(weights sha, info) of the plain run (no checkpoint), computed once per case."""
    case = (spec_name, arch_name)
    if case not in _UNINTERRUPTED:
        model = _model(task, **ARCHS[arch_name])
        info = train(model, task, SPECS[spec_name], 0, "cpu")
        _UNINTERRUPTED[case] = (_sha(model), info)
    return _UNINTERRUPTED[case]


def _stop_at(step: int, exc: type[BaseException] = KeyboardInterrupt):
    def progress(done: int, total: int, fields: dict) -> None:
        assert total == STEPS and set(fields) == {"loss", "accuracy"}
        if done == step:
            raise exc(f"stopped at step {done}")

    return progress


def _saved_steps(directory: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in directory.glob("step-*"))


@pytest.mark.parametrize("arch_name", list(ARCHS))
@pytest.mark.parametrize("spec_name", list(SPECS))
def test_resume_after_keyboard_interrupt_is_bit_identical(task, tmp_path, spec_name, arch_name):
    expected_sha, expected = _uninterrupted(task, spec_name, arch_name)
    spec, arch = SPECS[spec_name], ARCHS[arch_name]
    checkpoint = Checkpoint(tmp_path / "state", every_s=1e9)  # only the save on interrupt
    with pytest.raises(KeyboardInterrupt):
        train(_model(task, **arch), task, spec, 0, "cpu", checkpoint=checkpoint, progress=_stop_at(17))
    assert _saved_steps(checkpoint.dir) == [17]
    files = sorted(p.name for p in (checkpoint.dir / "step-00000017").iterdir())
    assert files == ["model.safetensors", "state.json", "train.safetensors"]  # never a pickle

    model = _model(task, **arch)
    info = train(model, task, spec, 0, "cpu", checkpoint=checkpoint)
    assert info["resumed_from_step"] == 17
    assert _sha(model) == expected_sha
    assert info["history"] == expected["history"]
    assert info["final_loss"] == expected["final_loss"] and info["train_accuracy"] == expected["train_accuracy"]


def test_periodic_saves_survive_a_crash_and_resume_bit_identically(task, tmp_path):
    """every_s=0 saves after every step; an error that is not an interrupt saves nothing more, so the run
    resumes from the last periodic state (the step before the one that crashed)."""
    expected_sha, expected = _uninterrupted(task, "answer", "no-dropout")
    checkpoint = Checkpoint(tmp_path / "state", every_s=0)
    with pytest.raises(RuntimeError, match="stopped at step 23"):
        train(_model(task), task, SPECS["answer"], 0, "cpu", checkpoint=checkpoint,
              progress=_stop_at(23, RuntimeError))
    assert _saved_steps(checkpoint.dir) == [22], "older states are deleted once a newer one is in place"
    model = _model(task)
    info = train(model, task, SPECS["answer"], 0, "cpu", checkpoint=checkpoint)
    assert info["resumed_from_step"] == 22
    assert _sha(model) == expected_sha and info["history"] == expected["history"]


@pytest.mark.parametrize("arch_name", list(ARCHS))
def test_an_interrupt_in_the_middle_of_a_forward_pass_resumes_bit_identically(task, tmp_path, arch_name):
    """Interrupted inside step 17's forward pass: the batch was drawn and (with dropout) torch's RNG has moved,
    so the state saved is step 17's start, RNGs included."""
    expected_sha, expected = _uninterrupted(task, "answer", arch_name)
    model = _model(task, **ARCHS[arch_name])
    calls = []

    def interrupt(module, args):
        if module.training:  # evaluation passes run in eval mode
            calls.append(1)
            if len(calls) == 18:
                raise KeyboardInterrupt

    hook = model.transformer.h[1].register_forward_pre_hook(interrupt)  # after block 0's dropout
    checkpoint = Checkpoint(tmp_path / "state", every_s=1e9)
    with pytest.raises(KeyboardInterrupt):
        train(model, task, SPECS["answer"], 0, "cpu", checkpoint=checkpoint)
    hook.remove()
    assert _saved_steps(checkpoint.dir) == [17]
    model = _model(task, **ARCHS[arch_name])
    info = train(model, task, SPECS["answer"], 0, "cpu", checkpoint=checkpoint)
    assert info["resumed_from_step"] == 17
    assert _sha(model) == expected_sha and info["history"] == expected["history"]


def test_an_interrupt_inside_the_update_keeps_the_previous_state(task, tmp_path, monkeypatch):
    """Interrupted after the optimizer changed the weights but before the step was complete: no consistent
    state exists then, so the one saved before the step is resumed (saving the half-updated one would
    resume to other bits)."""
    import torch

    expected_sha, expected = _uninterrupted(task, "answer", "no-dropout")
    original = torch.optim.lr_scheduler.LambdaLR.step

    def step(self, *args, **kwargs):
        if self.last_epoch == 23:  # step 23: the optimizer has just updated the weights
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    checkpoint = Checkpoint(tmp_path / "state", every_s=0)
    monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step", step)
    with pytest.raises(KeyboardInterrupt):
        train(_model(task), task, SPECS["answer"], 0, "cpu", checkpoint=checkpoint)
    monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step", original)
    assert _saved_steps(checkpoint.dir) == [23]
    model = _model(task)
    info = train(model, task, SPECS["answer"], 0, "cpu", checkpoint=checkpoint)
    assert info["resumed_from_step"] == 23
    assert _sha(model) == expected_sha and info["history"] == expected["history"]


def _interrupted_state(task, tmp_path, step: int = 17) -> Checkpoint:
    checkpoint = Checkpoint(tmp_path / "state", every_s=1e9, fingerprint="fixture-key")
    with pytest.raises(KeyboardInterrupt):
        train(_model(task), task, SPECS["answer"], 0, "cpu", checkpoint=checkpoint, progress=_stop_at(step))
    return checkpoint


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["weights", "optimizer", "state.json", "missing file"])
def test_a_corrupted_state_is_ignored_and_training_starts_over(task, tmp_path, damage):
    expected_sha, expected = _uninterrupted(task, "answer", "no-dropout")
    checkpoint = _interrupted_state(task, tmp_path)
    state = checkpoint.dir / "step-00000017"
    if damage == "weights":
        _flip(state / "model.safetensors")
    elif damage == "optimizer":
        _flip(state / "train.safetensors")
    elif damage == "state.json":
        (state / "state.json").write_text("{not json")
    else:
        (state / "train.safetensors").unlink()

    model = _model(task)
    info = train(model, task, SPECS["answer"], 0, "cpu", checkpoint=checkpoint)
    assert info["resumed_from_step"] == 0
    assert len(info["ignored_state"]) == 1 and str(state) in info["ignored_state"][0]
    assert _sha(model) == expected_sha and info["history"] == expected["history"]


@pytest.mark.parametrize("change", ["caller fingerprint", "seed", "lr", "initial weights"])
def test_a_state_saved_for_something_else_is_not_resumed(task, tmp_path, change):
    checkpoint = _interrupted_state(task, tmp_path)
    spec, seed, model = SPECS["answer"], 0, _model(task)
    if change == "caller fingerprint":
        checkpoint = Checkpoint(checkpoint.dir, every_s=1e9, fingerprint="another-key")
    elif change == "seed":
        seed = 1
    elif change == "lr":
        spec = TrainSpec(**{**spec.__dict__, "lr": 1e-3})
    else:
        import torch

        with torch.no_grad():
            model.transformer.wte.weight.mul_(2)  # same shapes, other starting weights
    info = train(model, task, spec, seed, "cpu", checkpoint=checkpoint)
    assert info["resumed_from_step"] == 0
    assert "another recipe" in info["ignored_state"][0]


def test_a_damaged_newer_state_falls_back_to_the_older_one(task, tmp_path):
    """A leftover temporary directory (a kill during a save) and a damaged newer state: the intact older
    state is resumed, and still to the same bits."""
    expected_sha, expected = _uninterrupted(task, "answer", "no-dropout")
    checkpoint = _interrupted_state(task, tmp_path, step=17)
    older = checkpoint.dir / "step-00000017"
    newer = checkpoint.dir / "step-00000030"
    shutil.copytree(older, newer)
    _flip(newer / "model.safetensors")
    half = checkpoint.dir / ".tmp-killed"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")
    model = _model(task)
    info = train(model, task, SPECS["answer"], 0, "cpu", checkpoint=checkpoint)
    assert info["resumed_from_step"] == 17 and str(newer) in info["ignored_state"][0]
    assert _sha(model) == expected_sha and info["history"] == expected["history"]


def test_state_json_holds_the_rngs_scheduler_and_history(task, tmp_path):
    checkpoint = _interrupted_state(task, tmp_path, step=20)
    record = json.loads((checkpoint.dir / "step-00000020" / "state.json").read_text())
    assert record["step"] == 20
    assert [h["step"] for h in record["history"]] == [10, 20]
    assert record["numpy_rng"]["bit_generator"] == "PCG64"
    assert record["scheduler"]["last_epoch"] == 20
    assert record["aliases"] == {"lm_head.weight": "transformer.wte.weight"}  # tied weights stored once
    from safetensors.torch import load_file

    tensors = load_file(checkpoint.dir / "step-00000020" / "train.safetensors")
    assert tensors["rng.torch"].dtype.is_floating_point is False and tensors["rng.torch"].numel() > 0
    assert float(tensors["optimizer.0.step"]) == 20.0


def test_without_a_checkpoint_nothing_is_saved_and_progress_is_reported(task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen: list[tuple[int, int]] = []
    info = train(_model(task), task, SPECS["answer"], 0, "cpu",
                 progress=lambda done, total, fields: seen.append((done, total)))
    assert seen == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert info["resumed_from_step"] == 0 and list(tmp_path.iterdir()) == []


def test_checkpoint_every_reads_the_environment(monkeypatch):
    monkeypatch.delenv("MECHCHECK_CHECKPOINT_EVERY", raising=False)
    assert checkpoint_every() == 120.0 and Checkpoint(Path("x")).interval() == 120.0
    monkeypatch.setenv("MECHCHECK_CHECKPOINT_EVERY", "0.5")
    assert Checkpoint(Path("x")).interval() == 0.5
    assert Checkpoint(Path("x"), every_s=7).interval() == 7.0  # an explicit value wins
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("MECHCHECK_CHECKPOINT_EVERY", bad)
        with pytest.raises(ValueError, match="MECHCHECK_CHECKPOINT_EVERY"):
            Checkpoint(Path("x")).interval()
