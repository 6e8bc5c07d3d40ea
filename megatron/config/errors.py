"""The one exception type for bad input, so entry points can print it cleanly instead of a traceback."""


class ConfigError(ValueError):
    """Raised for a bad flag, ds_config key or input file, before any process group starts.

    The message names the flag, key or file, the value that was seen, and what to do instead.
    """
