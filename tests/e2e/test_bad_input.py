"""Every user mistake ends with one line on stderr and exit code 2, and loses nothing.

The line starts with `error:`, names the key, file, line, column, class or path at fault, and says
what was expected or how to fix it; no traceback unless `--debug`.

Each case is a real `python -m forgeml ...` subprocess in its own directory. The calls are
launched together by the `outcomes` fixture (each pays ~2 s of imports) and every test checks
the result of its case.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from conftest import Cli, CliResult

HEADER = "age,income,color,label"


def tiny_rows(n: int = 60) -> list[str]:
    """n deterministic rows: the label is 'yes' for age > 45, so both classes appear."""
    rows = []
    for i in range(n):
        age = 18 + (i * 7) % 60
        income = 1000 + (i * 37) % 80 * 100
        color = ("red", "green", "blue")[i % 3]
        rows.append(f"{age},{income},{color},{'yes' if age > 45 else 'no'}")
    return rows


def csv_text(rows: list[str], header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def with_row(line: int, text: str) -> str:
    """tiny.csv with file line `line` (the header is line 1) replaced by `text`."""
    rows = tiny_rows()
    rows[line - 2] = text
    return csv_text(rows)


TINY_YAML = """\
data:
  source: tiny.csv
  target: label
  split: {train: 1.0, val: 0.0, test: 0.0}
model:
  name: mlp
  hidden_sizes: [8]
train:
  batch_size: 16
  max_epochs: 1
"""

CNN_YAML = """\
data:
  source: images
  split: {train: 1.0, val: 0.0, test: 0.0}
model:
  name: cnn
  channels: [4]
  head_hidden: []
train:
  max_epochs: 1
"""


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_folder(bad: bytes | None = None) -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = {"img.yaml": CNN_YAML}
    for k, name in enumerate(("cat", "dog")):
        for i in range(3):
            files[f"images/{name}/{i}.png"] = png_bytes(10 * k + i)
    if bad is not None:
        files["images/cat/bad.png"] = bad
    return files


@dataclass
class Case:
    """One bad input: the files its directory holds, the CLI arguments, and what the error names.

    Every directory also holds tiny.csv (60 rows) and tiny.yaml (1 epoch of a small MLP).
    `prepare(case_dir, run_dir)` runs before the call, for cases that need the trained run.
    """

    args: list[str]
    expect: tuple[str, ...] = ()
    files: dict[str, str | bytes] = field(default_factory=dict)
    prepare: Callable[[Path, Path], None] | None = None


def _copy_run(case_dir: Path, run_dir: Path) -> None:
    shutil.copytree(run_dir, case_dir / "runs" / "tiny")


def _tamper_weights(case_dir: Path, run_dir: Path) -> None:
    shutil.copytree(run_dir, case_dir / "tampered")
    weights = case_dir / "tampered" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))


# Cases that need only their files.
CASES: dict[str, Case] = {
    # 1. unknown keys, in the file and on the command line
    "unknown_top_level_key": Case(
        ["validate", "bad.yaml"],
        (
            "bad.yaml: unknown config key 'trian'",
            "did you mean 'train'?",
            "valid keys in the top level: seed, data, model, train, output",
        ),
        {"bad.yaml": TINY_YAML.replace("\ntrain:", "\ntrian:")},
    ),
    "unknown_nested_key_in_file": Case(
        ["validate", "bad.yaml"],
        (
            "bad.yaml: unknown config key 'train.max_epoch'",
            "did you mean 'train.max_epochs'?",
            "valid keys in 'train':",
        ),
        {"bad.yaml": TINY_YAML.replace("max_epochs:", "max_epoch:")},
    ),
    "unknown_key_override_max_epoch": Case(
        ["train", "tiny.yaml", "train.max_epoch=3"],
        (
            "override 'train.max_epoch=3': unknown config key 'train.max_epoch'",
            "did you mean 'train.max_epochs'?",
        ),
    ),
    "unknown_key_override_learning_rate": Case(
        ["train", "tiny.yaml", "train.lerning_rate=0.1"],
        (
            "override 'train.lerning_rate=0.1': unknown config key 'train.lerning_rate'",
            "did you mean 'train.optimizer.lr'?",
        ),
    ),
    "unknown_cnn_key_override": Case(
        ["validate", "img.yaml", "model.chanels=[8]"],
        ("unknown config key 'model.chanels'", "did you mean 'model.channels'?"),
        image_folder(),
    ),
    # 2. values of the wrong type or out of range
    "batch_size_not_int": Case(
        ["train", "tiny.yaml", "train.batch_size=abc"],
        (
            "override 'train.batch_size=abc'",
            "'train.batch_size' (got 'abc')",
            "valid integer",
            "e.g. train.batch_size=64",
        ),
    ),
    "max_epochs_negative": Case(
        ["train", "tiny.yaml", "train.max_epochs=-1"],
        ("'train.max_epochs' (got -1)", "greater than or equal to 1", "e.g. train.max_epochs=10"),
    ),
    "precision_unknown": Case(
        ["train", "tiny.yaml", "train.precision=fp8"],
        ("'train.precision' (got 'fp8')", "'auto', 'fp32' or 'bf16'"),
    ),
    "model_name_unknown": Case(
        ["train", "tiny.yaml", "model.name=transformerx"],
        ("'model.name': 'transformerx'", "expected one of 'mlp', 'cnn'", "e.g. model.name=mlp"),
    ),
    # 3. malformed command line or config file
    "override_without_equals": Case(
        ["train", "tiny.yaml", "train.max_epochs"],
        ("override 'train.max_epochs' is not of the form key.sub=value", "train.max_epochs=5"),
    ),
    "invalid_yaml": Case(
        ["train", "broken.yaml"],
        ("broken.yaml, line 5", "fix the YAML syntax"),
        {"broken.yaml": "data:\n  source: tiny.csv\nmodel:\n  name: mlp\n   hidden_sizes: [8]\n"},
    ),
    "missing_config_file": Case(
        ["train", "nope.yaml"],
        ("config file nope.yaml does not exist", "pass the path to a YAML config"),
    ),
    "config_is_a_list": Case(
        ["validate", "list.yaml"],
        ("list.yaml: expected a YAML mapping of sections", "found list"),
        {"list.yaml": "- data\n- model\n"},
    ),
    # 4. data files that cannot be read
    "missing_data_file": Case(
        ["train", "tiny.yaml", "data.source=nope.csv"],
        ("data file 'nope.csv' not found", "check the path"),
    ),
    "directory_named_csv": Case(
        ["validate", "tiny.yaml", "data.source=x.csv"],
        ("image folder x.csv has no class sub-folders", "x.csv/<class_name>/<image>.png"),
        {"x.csv/notes.md": "not a class folder"},
    ),
    "unsupported_extension": Case(
        ["validate", "tiny.yaml", "data.source=data.xlsx"],
        ("data.xlsx: unsupported file type '.xlsx'", "expected one of .csv", "convert the file"),
        {"data.xlsx": "not really excel"},
    ),
    # 5. target column absent
    "missing_target_column": Case(
        ["train", "tiny.yaml", "data.target=price"],
        (
            "tiny.csv: target column 'price' not found",
            "columns are: age, income, color, label",
            "set data.target",
        ),
    ),
    # 6. a word in a numeric column
    "non_numeric_declared_numeric": Case(
        ["validate", "tiny.yaml", "data.source=ages.csv", "data.columns.age.type=numeric"],
        ("ages.csv, line 6, column 'age': 'abc' is not a number", "expected a numeric value"),
        {"ages.csv": with_row(6, "abc,5000,red,no")},
    ),
    "non_numeric_only_in_test_source": Case(
        ["validate", "tiny.yaml", "data.test_source=test.csv"],
        (
            "test.csv, line 4, column 'age': 'old' is not a number",
            "numeric by inference",
            "data.columns.age.type=category",
        ),
        {"test.csv": csv_text(["30,2000,red,no", "50,3000,blue,yes", "old,4000,red,yes"])},
    ),
    # 7. a missing value without a fill rule (train: also checks that no run is left behind)
    "missing_value_without_fill": Case(
        ["train", "--quiet", "tiny.yaml", "data.source=holes.csv"],
        ("holes.csv, line 8, column 'age': missing value", "data.columns.age.fill="),
        {"holes.csv": with_row(8, ",5000,red,no")},
    ),
    # 8. nothing to learn from
    "header_only": Case(
        ["validate", "tiny.yaml", "data.source=head.csv"],
        ("head.csv has no data rows", "expected a header line and at least one row"),
        {"head.csv": HEADER + "\n"},
    ),
    "empty_file": Case(
        ["validate", "tiny.yaml", "data.source=empty.csv"],
        ("empty.csv has no data rows", "expected a header line"),
        {"empty.csv": ""},
    ),
    # 9. stratified split with a class of one row
    "single_row_class_stratified": Case(
        ["validate", "tiny.yaml", "data.split.train=0.8", "data.split.val=0.2"],
        (
            "class 'maybe' of target column 'label' has only 1 row",
            "data.split.stratify=false",
        ),
        {"tiny.csv": with_row(4, "40,4000,red,maybe")},
    ),
    # 10. one class only
    "one_class_only": Case(
        ["validate", "tiny.yaml", "data.source=same.csv"],
        (
            "same.csv: the training split has only one class ('yes') in target column 'label'",
            "needs at least two",
        ),
        {"same.csv": csv_text([r.rsplit(",", 1)[0] + ",yes" for r in tiny_rows()])},
    ),
    # 11. garbage in an image folder
    "unreadable_image": Case(
        ["validate", "img.yaml"],
        ("cannot read image", "images/cat/bad.png", "expected a PNG or JPEG file"),
        image_folder(bad=b"this is not a png"),
    ),
    # 12. a row with an extra field
    "row_with_too_many_fields": Case(
        ["validate", "tiny.yaml", "data.source=wide.csv"],
        (
            "wide.csv, line 5: expected 4 fields as in the header, found 5",
            "unquoted delimiter",
        ),
        {"wide.csv": with_row(5, "33,2000,red,no,extra")},
    ),
    # 13. (no run needed) not a finished run
    "predict_on_unfinished_run": Case(
        ["predict", "half_run", "tiny.csv"],
        ("half_run is not a finished forgeml run (no forgeml.json)", "train again"),
        {"half_run/config.yaml": TINY_YAML},
    ),
    "evaluate_on_unfinished_run": Case(
        ["evaluate", "half_run"],
        ("half_run is not a finished forgeml run (no forgeml.json)", "train again"),
        {"half_run/config.yaml": TINY_YAML},
    ),
    # 16. validate runs the same checks as train
    "validate_bad_config": Case(  # the same mistake as unknown_key_override_max_epoch
        ["validate", "tiny.yaml", "train.max_epoch=3"],
        ("unknown config key 'train.max_epoch'",),
    ),
}

# Cases that run against the trained tiny run; RUN in args is replaced by its path.
RUN_CASES: dict[str, Case] = {
    "predict_missing_column": Case(
        ["predict", "RUN", "noage.csv"],
        ("noage.csv: column 'age' is missing", "the model needs columns: age, income, color"),
        {"noage.csv": "income,color\n2000,red\n3000,blue\n"},
    ),
    "predict_missing_input": Case(
        ["predict", "RUN", "nothere.csv"],
        ("data file 'nothere.csv' not found", "check the path"),
    ),
    "predict_tampered_weights": Case(
        ["predict", "tampered", "tiny.csv"],
        ("tampered/model.safetensors does not match the sha256", "restore it or train again"),
        prepare=_tamper_weights,
    ),
    "evaluate_data_without_target": Case(
        ["evaluate", "RUN", "--data", "unlabelled.csv"],
        ("unlabelled.csv: target column 'label' is missing", "add the column"),
        {"unlabelled.csv": "age,income,color\n30,2000,red\n50,3000,blue\n"},
    ),
    "output_name_of_finished_run": Case(
        ["train", "--quiet", "tiny.yaml", "output.name=tiny"],
        ("run directory runs/tiny already holds a finished run", "output.overwrite=true"),
        prepare=_copy_run,
    ),
}


def _setup(case_dir: Path, case: Case, run_dir: Path | None) -> list[str]:
    case_dir.mkdir(parents=True)
    files = {"tiny.csv": csv_text(tiny_rows()), "tiny.yaml": TINY_YAML, **case.files}
    for name, content in files.items():
        path = case_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    if case.prepare is not None:
        assert run_dir is not None
        case.prepare(case_dir, run_dir)
    return [str(run_dir) if a == "RUN" else a for a in case.args]


@dataclass
class Outcome:
    case: Case
    dir: Path
    result: CliResult


def _run_cases(
    cli: Cli, root: Path, cases: dict[str, Case], run_dir: Path | None
) -> dict[str, Outcome]:
    calls = [(root / name, _setup(root / name, case, run_dir)) for name, case in cases.items()]
    results = cli.run_many(calls)
    return {
        name: Outcome(case, root / name, result)
        for (name, case), result in zip(cases.items(), results, strict=True)
    }


# Extra calls launched with the first batch: the run the RUN_CASES use, a good config, --debug.
EXTRA: dict[str, Case] = {
    # the option between config and override also checks the CLI keeps collecting overrides
    "train_tiny_run": Case(["train", "tiny.yaml", "--quiet", "output.name=tiny"]),
    "validate_good_config": Case(["validate", "tiny.yaml"]),
    "debug_shows_traceback": Case(["--debug", "train", "tiny.yaml", "train.max_epoch=3"]),
}


@pytest.fixture(scope="module")
def outcomes(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("bad_input")
    first = _run_cases(cli, root, {**EXTRA, **CASES}, None)
    trained = first["train_tiny_run"]
    assert trained.result.returncode == 0, trained.result.stderr
    run_dir = trained.dir / "runs" / "tiny"
    assert (run_dir / "forgeml.json").is_file()
    return {**first, **_run_cases(cli, root, RUN_CASES, run_dir)}


def assert_user_error(result: CliResult, *parts: str) -> str:
    """Exit code 2, one `error:` line on stderr naming every part, no traceback anywhere."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    line = lines[0]
    assert line.startswith("error: ") and line.strip() != "error:", line
    assert result.returncode == 2, (result.returncode, line)
    for part in parts:
        assert part in line, f"{part!r} not in {line!r}"
    return line


@pytest.mark.parametrize("name", [*CASES, *RUN_CASES])
def test_bad_input_is_one_line_exit_2(outcomes: dict[str, Outcome], name: str) -> None:
    outcome = outcomes[name]
    assert_user_error(outcome.result, *outcome.case.expect)


def test_unreadable_data_file(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "locked.csv"
    (tmp_path / "tiny.yaml").write_text(TINY_YAML, encoding="utf-8")
    data.write_text(csv_text(tiny_rows()), encoding="utf-8")
    data.chmod(0)
    if os.access(data, os.R_OK):
        # As root, chmod 000 does not stop reads: use a file whose read fails for everyone
        # (reading /proc/self/mem at offset 0 is an I/O error).
        data.chmod(0o644)
        data.unlink()
        data.symlink_to("/proc/self/mem")
        expected = ("cannot read locked.csv", "Input/output error")
    else:
        expected = ("cannot read locked.csv", "permission denied")
    try:
        result = cli.run(tmp_path, "validate", "tiny.yaml", "data.source=locked.csv")
    finally:
        if not data.is_symlink():
            data.chmod(0o644)
    assert_user_error(result, *expected)


def test_data_error_leaves_no_finished_run(outcomes: dict[str, Outcome]) -> None:
    runs = outcomes["missing_value_without_fill"].dir / "runs"
    assert not list(runs.glob("*/forgeml.json")), "a failed train left a finished-looking run"


def test_existing_run_is_byte_for_byte_unchanged(outcomes: dict[str, Outcome]) -> None:
    def digests(run: Path) -> dict[str, str]:
        return {
            str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*"))
            if p.is_file()
        }

    original = outcomes["train_tiny_run"].dir / "runs" / "tiny"
    kept = outcomes["output_name_of_finished_run"].dir / "runs" / "tiny"
    assert digests(kept) == digests(original)
    assert "forgeml.json" in digests(kept)


def test_validate_gives_the_same_message_as_train(outcomes: dict[str, Outcome]) -> None:
    validate = assert_user_error(outcomes["validate_bad_config"].result)
    train = assert_user_error(outcomes["unknown_key_override_max_epoch"].result)
    assert validate == train


def test_validate_good_config_says_ok(outcomes: dict[str, Outcome]) -> None:
    result = outcomes["validate_good_config"].result
    assert result.returncode == 0, result.stderr
    assert "ok: tiny.yaml is valid" in result.stdout
    assert not (outcomes["validate_good_config"].dir / "runs").exists()


def test_debug_shows_the_traceback(outcomes: dict[str, Outcome]) -> None:
    result = outcomes["debug_shows_traceback"].result
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "unknown config key 'train.max_epoch'" in result.stderr
