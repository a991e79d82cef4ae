"""A pretrained text classifier reads its one text column with the checkpoint's own tokenizer."""

from __future__ import annotations

from typing import Any

from forgeml.errors import ConfigError
from forgeml.models.hf_checkpoint import load_tokenizer, resolve_path


def use_checkpoint_tokenizer(config: Any, table: Any) -> Any:
    """`prepare`'s step for a pretrained text classifier: the data's one text column is read
    with the checkpoint's tokenizer.json unless the column names a tokenizer_file.

    Our cleaning's `lowercase` then defaults to off (the checkpoint's normaliser decides;
    a cased model must see capitals); set it in data.columns.<col>.text to override.

    Returns:
        The config with data.columns.<col> declared as text with that tokenizer_file.
    """
    from forgeml.config import load_config
    from forgeml.data.columns import feature_names
    from forgeml.data.text import TextConfig

    if config.model.head != "sequence_classification":
        return config
    data = config.data
    names = feature_names(table, data)
    if len(names) != 1:
        raise ConfigError(
            f"model.name=pretrained reads one text column, but {table.source} has "
            f"{len(names)} feature columns ({', '.join(names)}); keep the text column and add "
            "the others to data.exclude"
        )
    (name,) = names
    column = data.columns.get(name)
    if column is not None and column.type not in (None, "text"):
        raise ConfigError(
            f"data.columns.{name}.type={column.type}: model.name=pretrained reads text; "
            f"declare '{name}' as text"
        )
    text = column.text if column is not None and column.text is not None else TextConfig()
    if text.tokenizer_file is None:
        folder = resolve_path(config.model.path)
        load_tokenizer(folder)  # a clear error now if it has none
        updates: dict[str, Any] = {"tokenizer_file": str(folder / "tokenizer.json")}
        if "lowercase" not in text.model_fields_set:
            updates["lowercase"] = False
        text = TextConfig.model_validate({**text.model_dump(), **updates})
    raw = config.to_dict()
    raw["data"]["columns"][name] = {
        **raw["data"]["columns"].get(name, {}),
        "type": "text",
        "text": text.model_dump(),
    }
    return load_config(raw)
