"""The one exception type for bad input, so entry points can print it cleanly instead of a traceback."""


class ConfigError(ValueError):
    """Raised for a bad flag, ds_config key or input file, before any process group starts.

    The message names the flag, key or file, the value that was seen, and what to do instead.
    """


def flag_dest(flag: str) -> str:
    """The argparse attribute of a flag: ``--train-iters`` -> ``train_iters``."""
    return flag.lstrip("-").replace("-", "_")


def require_positive(flag: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{flag} {value}: must be > 0.")
