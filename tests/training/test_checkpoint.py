"""Checkpoints and numeric guards, in process: atomic commits, pruning, the best pointer,
verification and safe loading of `forgeml.training.checkpoint`; exact resume through
`forgeml.training.loop.fit`; and the non-finite guards (stop | skip) at a known step.

Every model here is a few hundred parameters on a few hundred rows.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import forgeml
from forgeml.config import TrainConfig
from forgeml.data.tensors import TensorData
from forgeml.models.registry import UserModule
from forgeml.tasks.table.evaluate import table_steps
from forgeml.training.checkpoint import (
    Checkpointer,
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
)
from forgeml.training.loop import FitResult, NonFiniteError, fit

SOURCE = Path(forgeml.__file__).resolve().parent


# --------------------------------------------------------------------------- helpers


def blobs(n: int = 96, features: int = 4, classes: int = 3, seed: int = 0) -> TensorData:
    """Gaussian blobs around fixed centers: (n, features) float32, (n,) int64 labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    x = 3.0 * torch.eye(classes, features)[labels] + torch.randn(n, features, generator=gen)
    return TensorData({"numeric": x}, labels)


def mlp(*, dropout: float = 0.0, batchnorm: bool = False, seed: int = 0) -> UserModule:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 16)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 3)]
    return UserModule(nn.Sequential(*layers))


def config(**options: Any) -> TrainConfig:
    options.setdefault("precision", "fp32")
    options.setdefault("batch_size", 16)
    options.setdefault("max_epochs", 2)
    options.setdefault("optimizer", {"name": "adam", "lr": 0.01})
    return TrainConfig.model_validate(options)


def train(
    model: nn.Module,
    cfg: TrainConfig,
    data: TensorData | None = None,
    *,
    val: TensorData | None = None,
    loss_fn: Any = F.cross_entropy,
    checkpointer: Checkpointer | None = None,
    resume: dict[str, Any] | None = None,
) -> FitResult:
    return fit(
        model,
        data if data is not None else blobs(),
        val,
        cfg,
        steps=table_steps("multiclass", loss_fn),
        seed=0,
        quiet=True,
        checkpointer=checkpointer,
        resume=resume,
    )


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def all_finite(state: dict[str, Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def without_rate(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "samples_per_s"} for row in history]


class PreStep:
    """Records the model's full state (weights and buffers) before every training forward.

    `states[k - 1]` is the state before optimizer step k (no gradient accumulation).
    """

    def __init__(self, model: nn.Module) -> None:
        self.states: list[dict[str, Tensor]] = []
        model.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, args: Any) -> None:
        if module.training:
            self.states.append(snapshot(module))


def nan_at(calls: set[int], how: str = "loss") -> Any:
    """Cross-entropy that turns non-finite on the given (1-based) training calls.

    how="loss": the loss (and so every gradient) is NaN. how="grad": the loss stays finite but
    the gradients are NaN -- 0 * sqrt(0) is 0, its derivative 0 * inf is NaN.
    """
    count = 0

    def loss_fn(outputs: Tensor, target: Tensor) -> Tensor:
        nonlocal count
        loss = F.cross_entropy(outputs, target)
        if not torch.is_grad_enabled():  # evaluation
            return loss
        count += 1
        if count in calls:
            if how == "loss":
                return loss * float("nan")
            zero = outputs.sum() - outputs.sum()
            return loss + 0.0 * zero.sqrt()
        return loss

    return loss_fn


def make_step(model: nn.Module, step: int) -> dict[str, Any]:
    """Arguments for `Checkpointer.save` for a tiny model after a made-up `step`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return {
        "step": step,
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "trainer": {"loop": {"step": step}},
        "tensors": {"generator": torch.Generator().manual_seed(step).get_state()},
    }


def names(checkpointer: Checkpointer) -> list[str]:
    return [p.name for p in checkpointer.committed()]


# --------------------------------------------------------------------------- checkpointer


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = nn.Linear(4, 2)
    args = make_step(model, 7)
    path = Checkpointer(tmp_path).save(**args)
    assert path.name == "step-00000007"
    assert sorted(p.name for p in path.iterdir()) == [
        "manifest.json",
        "model.safetensors",
        "optim.pt",
        "trainer.json",
    ]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 7
    assert sorted(manifest["sha256"]) == ["model.safetensors", "optim.pt", "trainer.json"]

    loaded = load_checkpoint(path)
    assert_same_state(loaded["model"], model.state_dict())
    assert loaded["trainer"] == {"loop": {"step": 7}}
    assert loaded["best_model"] is None
    assert torch.equal(loaded["tensors"]["generator"], args["tensors"]["generator"])
    restored = torch.optim.AdamW(nn.Linear(4, 2).parameters(), lr=0.1)
    restored.load_state_dict(loaded["optimizer"])
    for a, b in zip(
        restored.state_dict()["state"].values(),
        args["optimizer"].state_dict()["state"].values(),
        strict=True,
    ):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))


def test_rng_capture_and_restore_replays_every_generator() -> None:
    import random

    import numpy as np

    rng = capture_rng()
    json.dumps({k: rng[k] for k in ("python", "numpy")})  # the trainer.json part is JSON
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng(rng)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1]
    assert torch.equal(first[2], again[2])


def test_leftover_temporary_directory_is_ignored_and_cleaned(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path)
    model = nn.Linear(4, 2)
    checkpointer.save(**make_step(model, 1))
    # A write killed before its commit: a half-written directory under the temporary name.
    leftover = tmp_path / ".tmp-step-00000002"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\x00" * 10)
    assert names(checkpointer) == ["step-00000001"]
    assert checkpointer.latest_valid()["path"].name == "step-00000001"
    checkpointer.clean_temporary()
    assert not leftover.exists()
    # A later save of that step starts from a clean temporary directory.
    leftover.mkdir()
    (leftover / "junk").write_text("x")
    path = checkpointer.save(**make_step(model, 2))
    assert not leftover.exists()
    assert "junk" not in {p.name for p in path.iterdir()}
    assert names(checkpointer) == ["step-00000002", "step-00000001"]


def test_saving_a_step_again_never_leaves_it_missing(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path)
    model = nn.Linear(4, 2)
    checkpointer.save(**make_step(model, 1))
    with torch.no_grad():
        model.weight.add_(1.0)
    path = checkpointer.save(**make_step(model, 1))  # the same step again, new content
    assert names(checkpointer) == ["step-00000001"]
    assert not list(tmp_path.glob(".old-*"))
    assert torch.equal(load_checkpoint(path)["model"]["weight"], model.weight.detach())
    # A crash between moving the old copy aside and committing the new one: the old copy is
    # put back on the next resume, so the step is never lost.
    (tmp_path / "step-00000001").rename(tmp_path / ".old-step-00000001")
    assert names(checkpointer) == []
    checkpointer.clean_temporary()
    assert names(checkpointer) == ["step-00000001"]
    assert checkpointer.latest_valid()["path"].name == "step-00000001"


def test_crash_during_write_leaves_previous_checkpoints_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpointer = Checkpointer(tmp_path, keep_last=2)
    model = nn.Linear(4, 2)
    for step in (1, 2):
        checkpointer.save(**make_step(model, step))
    real_save = torch.save

    def half_then_crash(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(Path(f).read_bytes()[:20])
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save(**make_step(model, 3))
    # Nothing was pruned: an old checkpoint goes only after a new one is committed.
    assert names(checkpointer) == ["step-00000002", "step-00000001"]
    assert (tmp_path / ".tmp-step-00000003").is_dir()
    assert not (tmp_path / "step-00000003").exists()
    assert checkpointer.latest_valid()["path"].name == "step-00000002"


def test_keep_last_prunes_oldest_after_each_commit(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, keep_last=2)
    model = nn.Linear(4, 2)
    for step in (1, 2, 3, 4):
        checkpointer.save(**make_step(model, step))
        assert len(checkpointer.committed()) == min(step, 2)
    assert names(checkpointer) == ["step-00000004", "step-00000003"]


def test_best_checkpoint_survives_pruning_until_a_better_one(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, keep_last=2, keep_best=True)
    model = nn.Linear(4, 2)
    checkpointer.save(**make_step(model, 1), is_best=True)
    best_weights = snapshot(model)
    for step in (2, 3, 4):
        checkpointer.save(**make_step(model, step))
    assert names(checkpointer) == ["step-00000004", "step-00000003", "step-00000001"]
    assert checkpointer.best_name() == "step-00000001"
    assert_same_state(load_checkpoint(tmp_path / "step-00000001")["model"], best_weights)
    # A new best moves the pointer; the old best is then an ordinary old checkpoint.
    checkpointer.save(**make_step(model, 5), is_best=True)
    assert checkpointer.best_name() == "step-00000005"
    assert names(checkpointer) == ["step-00000005", "step-00000004"]
    assert not list(tmp_path.glob(".best*tmp"))


def test_keep_best_off_writes_no_pointer(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, keep_last=2, keep_best=False)
    model = nn.Linear(4, 2)
    for step in (1, 2, 3):
        checkpointer.save(**make_step(model, step), is_best=step == 1)
    assert checkpointer.best_name() is None
    assert names(checkpointer) == ["step-00000003", "step-00000002"]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("flip a byte of model.safetensors", "model.safetensors is truncated or corrupt"),
        ("truncate optim.pt", "optim.pt is truncated or corrupt"),
        ("edit trainer.json", "trainer.json is truncated or corrupt"),
        ("delete manifest.json", "has no readable manifest"),
        ("truncate manifest.json", "has no readable manifest"),
        ("drop optim.pt from the manifest", "lacks optim.pt"),
    ],
)
def test_load_rejects_a_checkpoint_that_does_not_match_its_manifest(
    tmp_path: Path, damage: str, message: str
) -> None:
    path = Checkpointer(tmp_path).save(**make_step(nn.Linear(4, 2), 3))
    if damage.startswith("flip"):
        blob = bytearray((path / "model.safetensors").read_bytes())
        blob[-1] ^= 0xFF  # same size, one bit pattern changed in the last weight
        (path / "model.safetensors").write_bytes(bytes(blob))
    elif damage == "truncate optim.pt":
        (path / "optim.pt").write_bytes((path / "optim.pt").read_bytes()[:100])
    elif damage == "edit trainer.json":
        (path / "trainer.json").write_text(json.dumps({"loop": {"step": 4}}))
    elif damage == "delete manifest.json":
        (path / "manifest.json").unlink()
    elif damage == "truncate manifest.json":
        (path / "manifest.json").write_text((path / "manifest.json").read_text()[:30])
    else:
        manifest = json.loads((path / "manifest.json").read_text())
        del manifest["sha256"]["optim.pt"]
        (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        load_checkpoint(path)
    assert "step-00000003" in str(info.value)


def test_latest_valid_reports_a_corrupt_newest_and_falls_back(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, keep_last=3)
    model = nn.Linear(4, 2)
    for step in (1, 2, 3):
        checkpointer.save(**make_step(model, step))
    (tmp_path / "step-00000003" / "model.safetensors").write_bytes(b"")
    (tmp_path / "step-00000002" / "manifest.json").unlink()
    warnings: list[str] = []
    assert checkpointer.latest_valid(warnings.append)["path"].name == "step-00000001"
    assert len(warnings) == 2
    assert "step-00000003" in warnings[0] and "model.safetensors" in warnings[0]
    assert "step-00000002" in warnings[1] and "manifest" in warnings[1]
    (tmp_path / "step-00000001" / "optim.pt").unlink()
    assert checkpointer.latest_valid(warnings.append) is None


class WritesAFile:
    """Unpickling this calls open(marker, "w"): proof that arbitrary code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_optim_pt_is_loaded_without_running_pickled_code(tmp_path: Path) -> None:
    path = Checkpointer(tmp_path / "checkpoints").save(**make_step(nn.Linear(4, 2), 1))
    marker = tmp_path / "pwned"
    optim = path / "optim.pt"
    torch.save(
        {"optimizer": WritesAFile(marker), "scheduler": None, "tensors": {}},
        optim,
    )
    # A correct sha256: the manifest check passes, only safe loading stands in the way.
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["sha256"]["optim.pt"] = __import__("hashlib").sha256(optim.read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(path)
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(optim, weights_only=False)
    assert marker.exists()


def unsafe_loads(text: str) -> list[str]:
    """Lines of Python source that could unpickle: torch.load without weights_only=True,
    pickle loads, np.load with allow_pickle other than False."""
    problems: list[str] = []
    tree = ast.parse(text)
    restricted = _restricted_unpicklers(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and restricted:
            continue  # pickle is imported for an allow-list Unpickler (find_class), see below
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            imported = [module] if module else [a.name for a in node.names]
            if any(m and m.split(".")[0] in ("pickle", "_pickle", "dill") for m in imported):
                problems.append(f"{node.lineno}: imports pickle")
            if module in ("torch", "numpy") and any(a.name == "load" for a in node.names):
                problems.append(f"{node.lineno}: from {module} import load")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        call = f"{owner.id if isinstance(owner, ast.Name) else '?'}.{node.func.attr}"
        keywords = {k.arg: k.value for k in node.keywords}
        if call == "torch.load":
            safe = keywords.get("weights_only")
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                problems.append(f"{node.lineno}: torch.load without weights_only=True")
        elif node.func.attr in ("load", "loads", "Unpickler") and call.startswith("pickle."):
            problems.append(f"{node.lineno}: {call}")
        elif call in ("np.load", "numpy.load") and "allow_pickle" in keywords:
            allow = keywords["allow_pickle"]
            if not (isinstance(allow, ast.Constant) and allow.value is False):
                problems.append(f"{node.lineno}: np.load with allow_pickle")
    return problems


def _restricted_unpicklers(tree: ast.Module) -> list[str]:
    """Classes deriving from pickle.Unpickler that override find_class (an allow-list: the
    only way a pickle may be read, as dcp_safe.py reads DCP's metadata)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = [ast.unparse(b) for b in node.bases]
        methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
        if "pickle.Unpickler" in bases and "find_class" in methods:
            found.append(node.name)
    return found


def test_no_unsafe_deserialisation_in_forgeml() -> None:
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 10
    problems = [
        f"{file.relative_to(SOURCE.parent)}:{problem}"
        for file in files
        for problem in unsafe_loads(file.read_text(encoding="utf-8"))
    ]
    assert not problems, "\n".join(problems)


def test_the_unsafe_load_check_flags_what_it_looks_for() -> None:
    bad = (
        "import pickle\n"
        "import torch, numpy as np\n"
        "torch.load(p)\n"
        "torch.load(p, weights_only=False)\n"
        "pickle.loads(b)\n"
        "np.load(p, allow_pickle=True)\n"
    )
    assert [p.split(":")[0] for p in unsafe_loads(bad)] == ["1", "3", "4", "5", "6"]
    good = "import torch, numpy as np\ntorch.load(p, weights_only=True)\nnp.load(p)\n"
    assert unsafe_loads(good) == []
    allow_list = "import pickle\nclass U(pickle.Unpickler):\n    def find_class(self, m, n): ...\n"
    assert unsafe_loads(allow_list) == []
    no_override = "import pickle\nclass U(pickle.Unpickler):\n    pass\n"
    assert [p.split(":")[0] for p in unsafe_loads(no_override)] == ["1"]


# --------------------------------------------------------------------------- exact resume


def test_resume_from_every_checkpoint_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    """Dropout (global RNG), gradient accumulation, a cosine schedule and restore-best early
    stopping: continuing from any checkpoint, mid-epoch or at an epoch end, ends bit-identical.
    """
    data, val = blobs(100), blobs(30, seed=1)
    cfg = config(
        max_epochs=3,
        grad_accum_steps=2,
        batch_size=8,
        optimizer={"name": "adamw", "lr": 0.05},
        scheduler={"name": "cosine", "warmup_steps": 2},
        early_stopping={"monitor": "val_loss", "patience": 10, "restore_best": True},
        checkpoint={"every_steps": 3, "keep_last": 100},
    )
    model = mlp(dropout=0.3)
    checkpointer = Checkpointer(tmp_path, keep_last=100)
    ref = train(model, cfg, data, val=val, checkpointer=checkpointer)
    final = snapshot(model)
    steps = sorted(int(p.name.removeprefix("step-")) for p in checkpointer.committed())
    assert steps == [3, 6, 7, 9, 12, 14, 15, 18, 21]  # every 3 steps + epoch ends (7 per epoch)

    for step in steps[:-1]:
        resumed = mlp(dropout=0.3, seed=123)  # other initial weights: all come from the checkpoint
        torch.manual_seed(999)  # another global RNG state: restored from the checkpoint too
        result = train(
            resumed, cfg, data, val=val, resume=load_checkpoint(tmp_path / f"step-{step:08d}")
        )
        assert_same_state(snapshot(resumed), final)
        assert without_rate(result.history) == without_rate(ref.history), f"from step {step}"
        assert (result.best, result.steps, result.epochs) == (ref.best, ref.steps, ref.epochs)


# --------------------------------------------------------------------------- numeric guards


@pytest.mark.parametrize("how", ["loss", "grad"])
def test_nonfinite_stop_names_the_step_and_keeps_weights_clean(tmp_path: Path, how: str) -> None:
    model = mlp()
    steps = PreStep(model)
    checkpointer = Checkpointer(tmp_path, keep_last=100)
    cfg = config(on_nonfinite="stop", checkpoint={"every_steps": 1, "keep_last": 100})
    with pytest.raises(NonFiniteError) as info:
        train(model, cfg, loss_fn=nan_at({5}, how), checkpointer=checkpointer)
    message = str(info.value)
    assert "at step 5 (epoch 1, batch 5)" in message
    assert f"the last good checkpoint is {tmp_path / 'step-00000004'}" in message
    # Detected in the same step: the weights are those from before step 5, all finite.
    assert len(steps.states) == 5
    assert_same_state(snapshot(model), steps.states[4])
    assert all_finite(model.state_dict())
    assert names(checkpointer)[0] == "step-00000004"  # nothing written after the bad step
    assert all_finite(load_checkpoint(tmp_path / "step-00000004")["model"])


def test_nonfinite_stop_without_checkpoints_says_so() -> None:
    with pytest.raises(NonFiniteError, match="at step 2 .*no checkpoint was written yet"):
        train(mlp(), config(), loss_fn=nan_at({2}))


@pytest.mark.parametrize("how", ["loss", "grad"])
def test_nonfinite_skip_drops_the_batch_and_finishes(how: str) -> None:
    model = mlp()
    steps = PreStep(model)
    cfg = config(on_nonfinite="skip", max_skipped_fraction=0.1)  # 12 steps: 1 skip allowed
    result = train(model, cfg, loss_fn=nan_at({5}, how))
    assert (result.skipped_steps, result.steps, result.stop_reason) == (1, 12, "max_epochs")
    assert_same_state(steps.states[5], steps.states[4])  # step 5 changed nothing
    assert not torch.equal(steps.states[6]["module.0.weight"], steps.states[5]["module.0.weight"])
    assert all_finite(model.state_dict())
    losses = [row["metrics"]["loss"] for row in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_nonfinite_ignore_does_no_check_as_a_plain_loop() -> None:
    # ignore is the opt-out: no error, and the NaN gradient of step 5 reaches the weights.
    model = mlp()
    result = train(model, config(on_nonfinite="ignore"), loss_fn=nan_at({5}, "grad"))
    assert (result.skipped_steps, result.steps) == (0, 12)
    assert not all_finite(model.state_dict())


def test_nonfinite_skip_aborts_past_max_skipped_fraction(tmp_path: Path) -> None:
    model = mlp()
    checkpointer = Checkpointer(tmp_path)
    cfg = config(on_nonfinite="skip", max_skipped_fraction=0.1, checkpoint={"every_steps": 2})
    with pytest.raises(NonFiniteError) as info:
        train(model, cfg, loss_fn=nan_at({3, 7}), checkpointer=checkpointer)
    message = str(info.value)
    assert "at step 7 (epoch 2, batch 1)" in message
    assert "2 of 12 steps skipped, more than train.max_skipped_fraction=0.1" in message
    assert f"the last good checkpoint is {tmp_path / 'step-00000006'}" in message
    assert all_finite(model.state_dict())


def test_inf_in_a_data_row_is_caught_at_its_step_buffers_included() -> None:
    """An inf feature turns the batch's BatchNorm statistics and loss NaN; the step holding
    that row is refused and the model, running statistics included, is left as before it."""
    data = blobs(96)
    data.inputs["numeric"][40, 2] = float("inf")
    permutation = torch.randperm(96, generator=torch.Generator().manual_seed(0))
    bad_step = int((permutation == 40).nonzero()) // 16 + 1  # epoch 1, batches of 16

    model = mlp(batchnorm=True)
    steps = PreStep(model)
    with pytest.raises(NonFiniteError, match=f"at step {bad_step} \\(epoch 1, batch {bad_step}\\)"):
        train(model, config(on_nonfinite="stop"), data)
    assert_same_state(snapshot(model), steps.states[bad_step - 1])

    model = mlp(batchnorm=True)
    steps = PreStep(model)
    result = train(model, config(on_nonfinite="skip", max_skipped_fraction=0.2), data)
    assert result.skipped_steps == 2  # the row is in one batch of each epoch
    assert_same_state(steps.states[bad_step], steps.states[bad_step - 1])
    assert all_finite(model.state_dict())


class Spiky(nn.Module):
    """A linear model whose k-th training forward has a NaN gradient (finite output)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 3)
        self.at, self.calls = at, 0

    def forward(self, x: Tensor) -> Tensor:  # (B, 2) -> (B, 3)
        out = self.linear(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                zero = self.linear.weight.sum() - self.linear.weight.sum()
                out = out + 0.0 * zero.sqrt()
        return out


def test_skipped_steps_reach_metrics_json(tmp_path: Path) -> None:
    cfg = {
        "data": {"source": "builtin:blobs?n=150"},
        "model": {"name": "mlp"},
        "train": {
            "batch_size": 32,
            "max_epochs": 2,
            "precision": "fp32",
            "on_nonfinite": "skip",
            "max_skipped_fraction": 0.2,
        },
        "output": {"dir": str(tmp_path), "name": "spiky"},
    }
    run = forgeml.train(cfg, module=Spiky(at=3), quiet=True)
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert metrics["skipped_steps"] == 1
    assert metrics["steps"] == 8
    assert all_finite(safetensors.torch.load_file(str(run.dir / "model.safetensors")))
