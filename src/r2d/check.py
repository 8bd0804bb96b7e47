"""Up-front checks of a workflow config and its input files (run when the Snakefile is parsed).

Each problem raises :class:`r2d.errors.ConfigError` or :class:`r2d.errors.InputError` with
one message: which key or file, what is wrong, what to do. Only headers are read.
"""

from __future__ import annotations

import logging
import os

from r2d.errors import ConfigError, InputError
from r2d.options import check_config_options

log = logging.getLogger(__name__)


def check_config(config: dict, *, open_input: bool = True) -> dict:
    """Check a (schema-validated) config dict; return facts about the input (``n``, ``box``, ``apix``)."""
    check_config_options(config)
    if not config.get("classkeepsig") and not (0 < config["classkeep"] <= 1):
        raise ConfigError(f"classkeep: {config['classkeep']} must be in (0, 1] unless classkeepsig is true "
                          f"(then it is a multiple of σ)")
    if config["naliref"] > config["ncls"]:
        raise ConfigError(f"naliref: {config['naliref']} alignment references exceed ncls={config['ncls']} classes; "
                          f"lower naliref or raise ncls")
    if config["nbasisfp"] > config["ncls"]:
        raise ConfigError(f"nbasisfp: {config['nbasisfp']} basis vectors exceed ncls={config['ncls']}: the MSA of "
                          f"the class averages needs at least nbasisfp averages; lower nbasisfp")
    facts = {}
    if not open_input:
        return facts
    from r2d import io

    path = config["input"]
    if not os.path.exists(path):
        raise InputError(f"input: {path} does not exist (relative paths are relative to the working directory "
                         f"{os.getcwd()}); set `input` in the config to your particle stack")
    stack = io.open_stack(path)
    facts = {"n": len(stack), "box": stack.box, "apix": stack.pixel_size or config.get("apix")}
    if len(stack) < config["ncls"]:
        raise InputError(f"input: {path} has {len(stack)} particles, fewer than ncls={config['ncls']}; lower ncls")
    if config.get("maxshift", -1) >= stack.box / 2:
        raise ConfigError(f"maxshift: {config['maxshift']} px is not less than half the box ({stack.box} px); "
                          f"use a value below {stack.box // 2}")
    if facts["apix"] is None:
        log.warning("input: %s has no pixel size; using 1.0 Å/px (set `apix` in the config)", path)
    for key in ("exclude", "initial"):
        val = config.get(key)
        if val and not os.path.exists(val):
            raise InputError(f"{key}: {val} does not exist; fix the path or set {key}: null")
    if config.get("initial"):
        init = io.open_stack(config["initial"])
        if init.box != stack.box:
            raise InputError(f"initial: {config['initial']} has {init.box} px images but the particles are "
                             f"{stack.box} px; give class averages of the same box size")
    if config.get("exclude"):
        from r2d.commands._common import read_exclude

        read_exclude(config["exclude"], len(stack))
    return facts
