"""A Hugging Face checkpoint on disk: where it is, what it holds, its tokenizer, its adapters.

pretrained.py builds forgeml's module from what this finds. Nothing here downloads: `model.path`
is a local directory or `pkg:NAME[/SUB]` (a folder inside an installed package).
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from forgeml.errors import ConfigError, ForgeError
from forgeml.packages import PREFIX, package_folder

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def sentence_pooling(folder: Path) -> str | None:
    """The pooling of a sentence-transformers directory (modules.json names a Pooling module):
    "mean", "cls" or "max"; None for other directories.

    Such a checkpoint was trained to give its sentence embedding through that pooling, not
    through BERT's [CLS] pooler (left untrained): a linear probe on MiniLM's mean-pooled states
    scores 0.89 on yelp sentiment, on its pooler output 0.77. Its final Normalize is left out,
    as a Linear head follows.
    """
    for path in sentence_files(folder)[1:]:
        try:
            options = json.loads((folder / path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        for mode, key in (
            ("mean", "pooling_mode_mean_tokens"),
            ("cls", "pooling_mode_cls_token"),
            ("max", "pooling_mode_max_tokens"),
        ):
            if options.get(key):
                return mode
    return None


def sentence_files(folder: Path) -> list[str]:
    """["modules.json", "<Pooling folder>/config.json"] of a sentence-transformers directory."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        pooling = [m["path"] for m in modules if str(m.get("type", "")).endswith(".Pooling")]
    except (OSError, ValueError, TypeError, KeyError):
        return []
    return ["modules.json", f"{pooling[0]}/config.json"] if pooling else []


def resolve_path(path: str) -> Path:
    """model.path -> an existing local directory; never downloads.

    `pkg:NAME[/SUB]` is the folder SUB (default "model") of the installed package NAME, located
    with importlib's finder: the package's code is not run.
    """
    if path.startswith(PREFIX):
        return package_folder(path, "model.path")
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder.resolve()
    if folder.exists():
        raise ConfigError(
            f"model.path {path} is a file; expected the model directory that holds config.json "
            "and model.safetensors"
        )
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path) and not path.startswith("."):
        raise ForgeError(
            f"model.path={path!r} is not a local directory: no local copy of {path}, and forgeml "
            f"never downloads; download it with huggingface-cli download {path} --local-dir DIR "
            "and set model.path: DIR"
        )
    raise ConfigError(
        f"model.path {path} does not exist; expected a Hugging Face model directory "
        "(config.json, model.safetensors) or pkg:NAME"
    )


def load_tokenizer(folder: Path):
    """The checkpoint's `tokenizers.Tokenizer` (FOLDER/tokenizer.json), without the padding and
    truncation a saved file may switch on (forgeml pads and cuts itself)."""
    from tokenizers import Tokenizer

    file = Path(folder) / "tokenizer.json"
    if not file.is_file():
        raise ConfigError(
            f"{folder} has no tokenizer.json; forgeml reads text with the checkpoint's fast "
            "tokenizer: write it once with transformers' AutoTokenizer.from_pretrained(DIR)"
            ".save_pretrained(DIR)"
        )
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust parser raises plain Exception
        raise ConfigError(f"{file} is not a valid tokenizer.json ({one_line(exc)})") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def special_ids(tokenizer, folder: Path) -> tuple[list[int], list[int]]:
    """The ids the post-processor puts before and after one text: ([101], [102]) for BERT's
    [CLS] ... [SEP]; ([], []) for a tokenizer without one (GPT-2)."""
    plain = tokenizer.encode("hello world", add_special_tokens=False).ids
    full = tokenizer.encode("hello world", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ConfigError(
        f"{folder / 'tokenizer.json'}: its post-processor changes the text's own tokens, so "
        "forgeml cannot tell its special tokens apart; use a tokenizer.json with a "
        "TemplateProcessing post-processor"
    )


def check_files(folder: Path, trust_pickle: bool) -> None:
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model.path {folder} has no config.json; expected a Hugging Face model directory "
            "written by save_pretrained"
        )
    if any((folder / name).is_file() for name in SAFE_WEIGHTS):
        return
    pickled = [name for name in PICKLE_WEIGHTS if (folder / name).is_file()]
    if pickled and not trust_pickle:
        raise ConfigError(
            f"model.path {folder} has only pickle weights ({pickled[0]}), which can run code "
            "when loaded; convert them to model.safetensors, or pass --trust-pickle (model.trust_pickle=true) if "
            "you trust where they came from"
        )
    if not pickled:
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise ForgeError(
            f"model.path {folder} has no weights (found: {present}); expected model.safetensors "
            "as save_pretrained writes it"
        )


@contextlib.contextmanager
def quiet_transformers():
    """No load report or progress bar from transformers: a new head being initialised is
    expected here, and other problems are checked and raised by `check_loaded`."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def check_loaded(model: nn.Module, info: dict[str, Any], folder: Path) -> None:
    """Only the new head may be missing from the checkpoint (and BERT's pooler, which some
    encoders are saved without); a missing body weight means config and weights disagree."""
    bare = getattr(model, "base_model", model) is model  # AutoModel: every weight is body
    prefix = "" if bare else model.base_model_prefix + "."
    body = sorted(
        k for k in info.get("missing_keys", ()) if k.startswith(prefix) and "pooler." not in k
    )
    if body:
        raise ForgeError(
            f"model.path {folder}: the weights do not fit config.json: {len(body)} weights of the "
            f"model are missing (e.g. {', '.join(body[:3])}); check the directory's files"
        )


def wrap_lora(model: nn.Module, lora: LoRAConfig, head: str, pooling: str | None) -> nn.Module:
    """peft adapters on `lora.target_modules`. The classification head stays trainable: peft's
    modules_to_save for an Auto head; our own Linear (with `pooling`) is outside peft's model."""
    from peft import LoraConfig, TaskType, get_peft_model

    if lora.target_modules is not None:
        _check_targets(model, lora.target_modules)
    if head == "causal_lm":
        task = TaskType.CAUSAL_LM
    else:
        task = TaskType.FEATURE_EXTRACTION if pooling is not None else TaskType.SEQ_CLS
    config = LoraConfig(
        task_type=task,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
    )
    try:
        with warnings.catch_warnings():
            # Noise on every load, nothing to act on: peft switches GPT-2's Conv1D to
            # fan_in_fan_out itself, and reads a property transformers 5 deprecates.
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return get_peft_model(model, config)
    except ValueError as exc:  # e.g. no default target modules known for this architecture
        raise ConfigError(
            f"model.lora: peft cannot adapt {type(model).__name__} ({one_line(exc)}); set "
            f"model.lora.target_modules to some of: {', '.join(_adaptable(model))}"
        ) from None


def _adaptable(model: nn.Module) -> list[str]:
    """Last name parts of the modules LoRA can adapt (Linear, and GPT-2's Conv1D)."""
    kinds: tuple[type, ...] = (nn.Linear,)
    with contextlib.suppress(ImportError):
        from transformers.pytorch_utils import Conv1D

        kinds = (nn.Linear, Conv1D)
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, kinds)}
    return sorted(names)


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    """Each target must name a module the way peft matches a list: the whole name or a
    dotted suffix of it."""
    names = [name for name, _ in model.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            raise ConfigError(
                f"model.lora.target_modules: {target!r} matches no module of "
                f"{type(model).__name__}; its Linear modules are: {', '.join(_adaptable(model))}"
            )


class LoRAConfig(BaseModel):
    """`model.lora`: low-rank adapters (peft `LoraConfig`) instead of full fine-tuning."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    r: int = Field(8, ge=1)  # rank of each adapter
    alpha: float = Field(16.0, gt=0)  # the update is scaled by alpha / r
    dropout: float = Field(0.0, ge=0, lt=1)  # on the adapter's input
    # Module names (the last part, e.g. query, value; or a dotted suffix) to adapt; None: peft's
    # default for the architecture (BERT: query, value; GPT-2: c_attn; Llama: q_proj, v_proj).
    target_modules: list[str] | None = None
    merge: bool = False  # on save: merge adapters into the base weights (a plain model)
