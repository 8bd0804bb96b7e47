"""EMAN2 option strings (``name:key=value:key=value``): parsing and checking.

Values are parsed as EMAN2 does: int, then float, then ``true``/``false`` → 1/0, otherwise
the string. The string ``None`` (or an empty string) means "no operation" and parses to
``None``. Every name and parameter is checked against the tables below, so a typo is a
config error before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from r2d.errors import ConfigError

#: aligner name -> accepted parameters
ALIGNERS: dict[str, set[str]] = {
    "rotational": {"rfp_mode", "maxshift"},
    "translational": {"maxshift", "nozero", "useflcf", "masked", "intonly"},
    "rotate_translate": {"maxshift", "rfp_mode", "useflcf", "zscore", "nozero"},
    "rotate_translate_flip": {
        "maxshift", "rfp_mode", "useflcf", "zscore", "nozero", "flip", "usebispec", "useharmonic",
    },
    "rotate_translate_tree": {"maxshift", "flip", "maxres", "initxform"},
    "refine": {"stepx", "stepy", "stepaz", "precision", "maxiter", "maxshift", "mode", "mask", "verbose"},
}

#: comparator name -> accepted parameters
COMPARATORS: dict[str, set[str]] = {
    "ccc": {"negative", "mask"},
    "dot": {"normalize", "negative", "mask"},
    "sqeuclidean": {"normto", "zeromask"},
    "phase": {"snrweight", "snrfn", "ampweight", "zeromask", "minres", "maxres"},
    "frc": {"sweight", "nweight", "ampweight", "snrweight", "zeromask", "minres", "maxres", "pmin", "pmax"},
    "optvariance": {"keepzero", "matchfilt", "invert", "matchamp", "radweight"},
}

#: averager name -> accepted parameters
AVERAGERS: dict[str, set[str]] = {
    "mean": {"ignore0", "sigma"},
    "median": set(),
    "ctf.weight": set(),
    "ctf.weight.autofilt": {"snrmult"},
}

#: normalisation processors usable as classnormproc
NORMALIZERS: dict[str, set[str]] = {
    "normalize": set(),
    "normalize.edgemean": set(),
    "normalize.circlemean": {"radius", "width"},
    "normalize.unitlen": set(),
    "normalize.unitsum": set(),
}

#: centering processors usable as `center`
CENTERERS: dict[str, set[str]] = {
    "xform.center": set(),
    "xform.centerofmass": {"threshold", "int_shift_only"},
    "xform.centeracf": set(),
    "nocenter": set(),
}

KINDS = {
    "aligner": ALIGNERS,
    "comparator": COMPARATORS,
    "averager": AVERAGERS,
    "normalizer": NORMALIZERS,
    "centerer": CENTERERS,
}


@dataclass(frozen=True)
class Option:
    """A parsed EMAN2 option string: ``name`` plus a ``params`` dict."""

    name: str
    params: dict = field(default_factory=dict)

    def get(self, key, default=None):
        return self.params.get(key, default)

    def __str__(self) -> str:
        return ":".join([self.name, *(f"{k}={v}" for k, v in self.params.items())])


def parse_value(text: str):
    """EMAN2's value parsing: int, float, true/false → 1/0, else the string."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    low = text.lower()
    if low == "true":
        return 1
    if low == "false":
        return 0
    return text


def parse(text: str | None, kind: str | None = None, key: str = "option") -> Option | None:
    """Parse ``name:key=value:…``; check name and parameters when ``kind`` is given.

    Returns ``None`` for ``None``, ``""`` or ``"None"``. ``key`` names the config key in
    error messages.
    """
    if text is None:
        return None
    text = str(text).strip()
    if text in ("", "None", "none"):
        return None
    name, *items = text.split(":")
    params = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"{key}: '{text}': parameter '{item}' is not of the form key=value "
                f"(EMAN2 syntax is name:key=value:key=value)"
            )
        k, v = item.split("=", 1)
        params[k.strip()] = parse_value(v.strip())
    opt = Option(name.strip(), params)
    if kind is not None:
        check(opt, kind, key)
    return opt


def check(opt: Option, kind: str, key: str = "option") -> None:
    """Raise ConfigError if ``opt`` is not a known ``kind`` or has an unknown parameter."""
    table = KINDS[kind]
    if opt.name not in table:
        raise ConfigError(
            f"{key}: unknown {kind} '{opt.name}'. Known {kind}s: {', '.join(sorted(table))}"
        )
    unknown = set(opt.params) - table[opt.name]
    if unknown:
        allowed = ", ".join(sorted(table[opt.name])) or "none"
        raise ConfigError(
            f"{key}: {kind} '{opt.name}' has no parameter {', '.join(sorted(unknown))} "
            f"(allowed: {allowed})"
        )


#: config key -> kind of EMAN2 option string it holds
CONFIG_OPTION_KINDS = {
    "simalign": "aligner",
    "simaligncmp": "comparator",
    "simralign": "aligner",
    "simraligncmp": "comparator",
    "simcmp": "comparator",
    "classalign": "aligner",
    "classaligncmp": "comparator",
    "classralign": "aligner",
    "classraligncmp": "comparator",
    "classaverager": "averager",
    "classcmp": "comparator",
    "classnormproc": "normalizer",
    "center": "centerer",
}


def check_config_options(config: dict) -> None:
    """Check every EMAN2 option string in a workflow config (raises ConfigError)."""
    for key, kind in CONFIG_OPTION_KINDS.items():
        if key in config:
            parse(config[key], kind, key=key)
    for key in ("simralign", "classralign"):
        opt = parse(config.get(key), "aligner", key=key)
        if opt is not None and opt.name != "refine":
            raise ConfigError(f"{key}: the second-stage aligner must be 'refine', not '{opt.name}'")
