"""Check a workflow config and its input files without running anything (the start-up checks).

Runs exactly the checks the workflow runs when it starts (``r2d.check``): the config against
its schema (unknown keys, types, ranges), the relations between values, and the particle
stack, ``exclude`` and ``initial`` files from their headers. Prints what it found and any
warnings; exits 2 with one message per problem. Nothing is written.

The config is read like Snakemake does: ``config/config.yaml`` (in ``--directory``), then each
``--configfile``, then ``--config KEY=VALUE`` items (values parsed as YAML).

  $ r2d check
  $ r2d check --configfile my.yaml --config ncls=64 iter=12
"""

from __future__ import annotations

import os
from pathlib import Path

from r2d.errors import ConfigError

DEFAULT_CONFIG = "config/config.yaml"


def add_args(p):
    p.add_argument("--configfile", nargs="+", default=[], metavar="FILE",
                   help=f"config files, applied after {DEFAULT_CONFIG} (as snakemake --configfile)")
    p.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="single config values (as snakemake --config)")
    p.add_argument("--directory", "-d", default=None, help="working directory of the run (as snakemake --directory)")
    p.add_argument("--schema", default=None, help="config schema (default: the one shipped with r2d, "
                   "which the workflow uses)")


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({exc}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected key: value lines, got a {type(data).__name__}")
    return data


def load_config(configfiles=(), items=()) -> dict:
    """The merged config of the working directory, as Snakemake builds it."""
    import yaml

    config: dict = {}
    files = [Path(DEFAULT_CONFIG)] if Path(DEFAULT_CONFIG).exists() else []
    files += [Path(f) for f in configfiles]
    for f in files:
        config.update(_read_yaml(f))
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--config {item!r}: expected KEY=VALUE")
        try:
            config[key.strip()] = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError:
            config[key.strip()] = value
    if not files and not items:
        raise ConfigError(f"no config: {DEFAULT_CONFIG} not found in {os.getcwd()}; give --configfile")
    return config


def main(args):
    from r2d.check import check_workflow_config

    if args.directory:
        os.chdir(args.directory)
    config = load_config(args.configfile, args.config)
    facts = check_workflow_config(config, args.schema)
    apix = f"{facts['apix']:g} Å/px" if facts.get("apix") else "no pixel size"
    excl = f", {facts['n_excluded']} excluded" if facts.get("n_excluded") else ""
    print(f"input: {config['input']}: {facts['n']} particles{excl}, {facts['box']} px, {apix}")
    print(f"run folder: {config['path']}; ncls={config['ncls']}, iter={config['iter']}, seed={config['seed']}")
    if facts.get("working") is not None:
        print(f"working resolution: {facts['working'].note}")
    for w in facts["warnings"]:
        print(f"warning: {w}")
    print("config OK")
    return 0
