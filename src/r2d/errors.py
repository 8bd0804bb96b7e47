"""Exceptions that carry a message meant for the user (no traceback is printed for them)."""


class UserError(Exception):
    """Bad input or configuration: the message says which file or key, what is wrong, what to do."""


class InputError(UserError):
    """A particle stack, STAR/CS file or other input file cannot be used."""


class ConfigError(UserError):
    """A config value or an EMAN2 option string is invalid."""
