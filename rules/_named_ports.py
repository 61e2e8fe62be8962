"""Shared by ``shell`` and ``python``: stages whose inputs and outputs the user names in
``inputs: {NAME: path}`` and ``outputs: {NAME: path}`` mappings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pipemake.rule import Ports, unknown_key

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def named_ports(config: Mapping[str, Any], ports: Ports) -> list[tuple[str, str]]:
    """Fill ``ports.inputs`` and ``ports.outputs`` from the config's mappings."""
    problems: list[tuple[str, str]] = []
    for section in ("inputs", "outputs"):
        value = config.get(section) or {}
        if not isinstance(value, dict):
            problems.append((section, f"{section!r} must be a mapping of NAME: path"))
            continue
        for name, path in value.items():
            if not isinstance(name, str) or not _NAME.match(name):
                problems.append((section, f"{section} name {name!r} is not a valid name"))
                continue
            if section == "inputs":
                if isinstance(path, str) and path:
                    ports.inputs[name] = path
                elif isinstance(path, list) and path and all(isinstance(x, str) for x in path):
                    ports.inputs[name] = list(path)
                else:
                    problems.append((section, f"input {name!r} must be a path or a list of paths"))
            elif isinstance(path, str) and path:
                ports.outputs[name] = path
                ports.output_kinds[name] = "path"
            else:
                problems.append((section, f"output {name!r} must be a path"))
    return problems


def unknown_keys(config: Mapping[str, Any], known: set[str], rule: str) -> list[tuple[str, str]]:
    """Problems for config keys the rule does not take."""
    return [(key, unknown_key(key, rule, known)) for key in config if key not in known]
