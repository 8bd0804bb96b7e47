"""Up-front checks of a workflow config and its input files, before any job runs.

Called when the Snakefile is parsed (``workflow/rules/common.smk``) and by ``r2d check``, through
the one entry point :func:`check_workflow_config`:

1. :func:`validate_schema`: the config against the schema shipped with the package
   (``r2d/schemas/config.schema.yaml``, :data:`SCHEMA`): unknown keys, wrong types,
   out-of-range values; defaults filled in, whole-number floats made ints;
2. :func:`check_config`: relations between values (``naliref`` ≤ ``ncls``, ``nbasisfp`` ≤ the
   class averages the MSA gets, ``classkeep`` …),
   EMAN2 option strings, the run folder, and the input files from their headers only: the
   particle stack (exists, readable, known format, square, one box size, at least ``ncls``
   particles after ``exclude``, pixel size), the ``exclude`` file (integers in range) and the
   ``initial`` averages (same box, enough images).

Each problem raises :class:`r2d.errors.ConfigError` (a config value) or
:class:`r2d.errors.InputError` (a file) with one message that starts with the config key and
says what is wrong and what to do. Problems that r2d can work around are returned as warnings
(so is a default that does not fit the other values and is lowered: ``nbasisfp`` for a small ``ncls``).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from importlib import resources
from pathlib import Path

from r2d.errors import ConfigError, InputError, UserError
from r2d.options import check_config_options
from r2d.working import working_geometry

log = logging.getLogger(__name__)

#: the workflow's config schema, package data of r2d (the workflow and ``r2d check`` both use it)
SCHEMA = Path(str(resources.files("r2d") / "schemas" / "config.schema.yaml"))

#: class averages the initial k-means makes at most (classmx_00: ``min(INIT_CLASSES, ncls)``)
INIT_CLASSES = 50

#: smallest box (px) the simmx search may be shrunk to
MIN_SEARCH_BOX = 8

_TYPE_WORDS = {"integer": "a whole number", "number": "a number", "string": "a text string",
               "boolean": "true or false", "null": "null", "object": "a mapping", "array": "a list"}


# ----------------------------------------------------------------------------- schema
def load_schema(path=None) -> dict:
    """The config schema (YAML) as a dict."""
    import yaml

    path = Path(path) if path is not None else SCHEMA
    try:
        with open(path) as fh:
            return yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"config schema {path} cannot be read ({exc.strerror}); "
                          "reinstall r2d (the schema is part of the package)") from None


def _resolve(schema: dict, prop: dict) -> dict:
    ref = prop.get("$ref")
    if ref and ref.startswith("#/"):
        node = schema
        for part in ref[2:].split("/"):
            node = node[part]
        return {**node, **{k: v for k, v in prop.items() if k != "$ref"}}
    return prop


def _types(prop: dict) -> list[str]:
    t = prop.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _schema_message(schema: dict, err) -> str:
    """One user message for one jsonschema ValidationError."""
    props = schema.get("properties", {})
    key = str(err.absolute_path[0]) if err.absolute_path else None
    prop = _resolve(schema, props.get(key, {})) if key else {}
    desc = prop.get("description", "")
    default = prop.get("default", None)
    shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
    example = f" (default: {shown})" if "default" in prop else ""
    v = err.validator
    if v == "additionalProperties" and key is None:
        unknown = sorted(set(err.instance) - set(props))
        msgs = []
        for name in unknown:
            close = difflib.get_close_matches(str(name), list(props), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else "check its spelling"
            msgs.append(f"{name}: unknown config key; {hint} (the keys are listed in config/config.yaml "
                        "and the README)")
        return "\n".join(msgs)
    if v == "required":
        missing = [m for m in err.validator_value if m not in err.instance]
        name = missing[0] if missing else "?"
        what = _resolve(schema, props.get(name, {})).get("description", "")
        return f"{name}: missing; set `{name}` in the config ({what})"
    if v == "type":
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in _types(prop) or _types(err.schema))
        if err.instance is None and key == "input":
            return "input: not set; set `input` to your particle stack (.mrcs/.mrc/.hdf/.star/.cs)"
        hint = ""
        if "boolean" in _types(prop) and str(err.instance).lower() in ("true", "false"):
            hint = f" (snakemake --config reads only True and False: {key}={str(err.instance).capitalize()})"
        return f"{key}: {err.instance!r} is not {words}; give {words}{example}{hint}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        rel = {"minimum": "at least", "exclusiveMinimum": "greater than", "maximum": "at most",
               "exclusiveMaximum": "less than"}[v]
        return f"{key}: {err.instance!r} is out of range; it must be {rel} {err.validator_value}" + \
            (f" ({desc})" if desc else "")
    if v == "minLength":
        return f"{key}: empty; give the {desc or 'value'}"
    if v == "enum":
        return f"{key}: {err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
    where = key or "config"
    return f"{where}: {err.message}"


def validate_schema(config: dict, schema: dict | str | os.PathLike | None = None) -> dict:
    """Check `config` against the schema; fill in defaults; turn whole-number floats of integer
    keys into ints (``--config ncls=8.0``). Raises :class:`ConfigError` listing every problem."""
    import jsonschema

    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a mapping of key: value, got {type(config).__name__}; "
                          "check the YAML of the config file")
    if not isinstance(schema, dict):
        schema = load_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        msgs = list(dict.fromkeys(_schema_message(schema, e) for e in errors))
        raise ConfigError("\n".join(msgs))
    for key, prop in schema.get("properties", {}).items():
        prop = _resolve(schema, prop)
        if key not in config and "default" in prop:
            config[key] = prop["default"]
        val = config.get(key)
        if "integer" in _types(prop) and isinstance(val, float) and val.is_integer():
            config[key] = int(val)
    return config


# ----------------------------------------------------------------------------- relations and files
def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_run_folder(run: str) -> None:
    if not str(run).strip():
        raise ConfigError("path: empty; set `path` to the run folder (e.g. r2d_01)")
    p = Path(run)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"path: {run} exists and is not a folder; choose another run folder name")
    anc = _existing_ancestor(p)
    if not anc.is_dir():
        raise ConfigError(f"path: {run} cannot be created because {anc} is a file; choose another run folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"path: cannot write the run folder {run}: {anc} is not writable; choose a folder "
                          "you can write (or --directory elsewhere)")


def _check_file_key(key: str, path) -> None:
    """The file named by config `key` exists, is a regular file and is readable."""
    if path is None or not str(path).strip():
        raise ConfigError(f"{key}: empty; give a file name or null")
    p = Path(path)
    if not p.exists():
        raise InputError(f"{key}: {path} does not exist (relative paths are relative to the working directory "
                         f"{os.getcwd()}); fix the path in the config")
    if not p.is_file():
        raise InputError(f"{key}: {path} is a folder, not a file; give the file itself")
    if not os.access(p, os.R_OK):
        raise InputError(f"{key}: {path} is not readable (permission denied); fix its permissions or copy it")


def _open(key: str, path):
    """io.open_stack with the config key in front of its message."""
    from r2d import io

    try:
        return io.open_stack(path)
    except InputError as exc:
        raise InputError(f"{key}: {exc}") from None


def _fit_nbasisfp(config: dict, defaulted, warnings: list[str], n_initial: int | None = None) -> None:
    """``nbasisfp`` against the class averages the MSA of the class averages gets.

    ``basis_YY`` is the MSA of iteration YY's references: for iteration 01 the initial k-means'
    ``min(INIT_CLASSES, ncls)`` averages (or the ``n_initial`` images of ``initial``), then
    ``ncls`` averages; ``input_fp_basis`` gets the subset's footprints, at least ``ncls`` of them.
    A default that exceeds this is lowered to it (one warning); a value the user set raises.
    """
    nb, ncls = config["nbasisfp"], config["ncls"]
    if n_initial is not None:
        first, source = n_initial, f"the {n_initial} images of initial"
    elif config.get("initial"):
        first, source = ncls, f"ncls={ncls}"
    else:
        first = min(INIT_CLASSES, ncls)
        source = f"ncls={ncls}" if first == ncls else f"the {first} initial classes"
    limit = min(ncls, first)
    if nb <= limit:
        return
    if "nbasisfp" in defaulted:
        config["nbasisfp"] = limit
        warnings[:] = [w for w in warnings if not w.startswith("nbasisfp:")]
        warnings.append(f"nbasisfp: the default {nb} basis vectors exceed the class averages the MSA gets "
                        f"({source}); using nbasisfp={limit} (set nbasisfp to choose another value)")
        return
    if nb > ncls:
        raise ConfigError(f"nbasisfp: {nb} basis vectors exceed ncls={ncls}: the MSA of "
                          f"the class averages needs at least nbasisfp averages; lower nbasisfp")
    if n_initial is None:
        raise ConfigError(f"nbasisfp: {nb} basis vectors exceed the {first} class averages of the initial "
                          f"k-means (min({INIT_CLASSES}, ncls)), the MSA of iteration 01; use at most {first}, "
                          "or give `initial` averages")
    # fewer `initial` images than nbasisfp: check_config's message on `initial` says what to do


def check_config(config: dict, *, open_input: bool = True, defaulted=frozenset()) -> dict:
    """Check a (schema-validated, defaults filled) config; return facts about the input.

    Facts: ``n`` (particles), ``n_excluded``, ``n_used``, ``box``, ``apix`` (Å/px or None),
    ``working`` (:class:`r2d.working.Working`: the box and pixel size the steps run at), ``warnings`` (list of messages for problems r2d works around). With ``open_input=False``
    only the config values are checked. ``defaulted``: the keys whose value is the schema's
    default, not the user's; such a value may be adapted to the others (``nbasisfp``), in
    ``config`` itself, with a warning.
    """
    warnings: list[str] = []
    facts: dict = {"warnings": warnings}
    check_config_options(config)
    ncls = config["ncls"]
    if not config.get("classkeepsig") and not (0 < config["classkeep"] <= 1):
        raise ConfigError(f"classkeep: {config['classkeep']} must be in (0, 1] unless classkeepsig is true "
                          f"(then it is a multiple of σ); use e.g. 0.85, or set classkeepsig: true")
    if config["naliref"] > ncls:
        raise ConfigError(f"naliref: {config['naliref']} alignment references exceed ncls={ncls} classes; "
                          f"lower naliref or raise ncls")
    _fit_nbasisfp(config, defaulted, warnings)
    _check_run_folder(config["path"])
    if not open_input:
        return facts
    from r2d.io import read_exclude

    path = config["input"]
    _check_file_key("input", path)
    log_records = _capture_warnings()
    try:
        stack = _open("input", path)
        if config.get("initial"):
            _check_file_key("initial", config["initial"])
            init = _open("initial", config["initial"])
        else:
            init = None
    finally:
        warnings.extend(log_records.stop())
    n, box = len(stack), stack.box
    facts.update(n=n, box=box, apix=stack.pixel_size or config.get("apix"))
    working = working_geometry(box, facts["apix"], config.get("maxres"), strict="maxres" not in defaulted)
    facts["working"] = working
    excl = []
    if config.get("exclude"):
        _check_file_key("exclude", config["exclude"])
        try:
            excl = read_exclude(config["exclude"], n)
        except InputError as exc:
            raise InputError(f"exclude: {exc}") from None
    used = n - len(excl)
    facts.update(n_excluded=len(excl), n_used=used)
    what = f"{n} particles" + (f", {len(excl)} of them excluded by {config['exclude']}" if len(excl) else "")
    if used < ncls:
        raise InputError(f"input: {path} has {what}, fewer than ncls={ncls} classes; lower ncls (at most {used})"
                         + (" or exclude fewer particles" if len(excl) else ""))
    if config["chunks"] == "auto":
        from r2d.resources import auto_chunks

        config["chunks"] = auto_chunks(used)
    if config["chunks"] > used:
        raise ConfigError(f"chunks: {config['chunks']} chunks for {used} particles; use at most {used} chunks")
    mask = config.get("maskdiameter")
    if mask:
        fov = box * (facts["apix"] or 1.0)
        if mask > fov:
            raise ConfigError(f"maskdiameter: {mask:g} Å is larger than the box ({box} px = {fov:g} Å at "
                              f"{facts['apix'] or 1.0:g} Å/px); use at most {fov:g} Å, about 1.2 x the particle's "
                              "diameter, or null for no mask")
    maxshift = config.get("maxshift", -1)
    if maxshift >= box / 2:
        raise ConfigError(f"maxshift: {maxshift} px is not less than half the box ({box} px); "
                          f"use a value below {box // 2} (or -1 for box//3)")
    shrink = config.get("shrink", 0)
    if shrink and shrink > 1:
        wbox = working.box
        m = int(2 * round(wbox / shrink / 2))
        if m < MIN_SEARCH_BOX:
            what = "working box" if working.cropped else "box"
            raise ConfigError(f"shrink: {shrink} reduces the {wbox} px {what} to {m} px for the simmx search; "
                              f"use at most {wbox // MIN_SEARCH_BOX} (or 0 for no shrinking)")
    apix_cfg = config.get("apix")
    if stack.pixel_size is None and apix_cfg is None:
        warnings.append(f"input: {path} has no pixel size; assuming 1.0 Å/px where one is needed "
                        "(set `apix` in the config)")
    elif stack.pixel_size is not None and apix_cfg is not None and \
            not math.isclose(stack.pixel_size, apix_cfg, rel_tol=1e-3):
        warnings.append(f"apix: {apix_cfg} Å/px is ignored; the input {path} has {stack.pixel_size:g} Å/px "
                        "(set apix: null to silence this)")
    if init is not None:
        if init.box != working.box:
            raise InputError(f"initial: {config['initial']} has {init.box} px images but the particles are "
                             f"{working.box} px" + (f" at the working resolution ({working.note})" if working.cropped
                                                    else "") + "; give class averages of the same box size"
                             + (" or set maxres: null" if working.cropped else ""))
        _fit_nbasisfp(config, defaulted, warnings, n_initial=len(init))
        need = max(config["naliref"], config["nbasisfp"])
        if len(init) < need:
            raise InputError(f"initial: {config['initial']} has {len(init)} images; iteration 01 needs at least "
                             f"max(naliref, nbasisfp) = {need}; give more averages or lower naliref/nbasisfp")
    return facts


class _capture_warnings:
    """Collect WARNING records of the ``r2d`` loggers (e.g. a non-standard MRC header) as messages."""

    def __init__(self):
        self.records: list[str] = []
        self.handler = logging.Handler(logging.WARNING)
        self.handler.emit = lambda rec: self.records.append(rec.getMessage())
        self.logger = logging.getLogger("r2d")
        self.logger.addHandler(self.handler)
        self.propagate = self.logger.propagate
        self.logger.propagate = False

    def stop(self) -> list[str]:
        self.logger.removeHandler(self.handler)
        self.logger.propagate = self.propagate
        return self.records


def check_workflow_config(config: dict, schema=None, *, open_input: bool = True) -> dict:
    """Schema, then relations and input files: the whole up-front check (raises UserError).

    ``config`` is completed in place: schema defaults filled in (and adapted, see
    :func:`check_config`), whole-number floats made ints.
    """
    given = set(config) if isinstance(config, dict) else set()
    validate_schema(config, schema)
    return check_config(config, open_input=open_input, defaulted=set(config) - given)


def format_error(exc: UserError) -> str:
    """The message printed for a failed check (several lines for several schema problems)."""
    lines = str(exc).splitlines() or [""]
    return "r2d: configuration error: " + "\n  ".join(lines)
