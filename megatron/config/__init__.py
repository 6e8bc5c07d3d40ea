"""Command-line flags and ds_config JSON, turned once into a validated, frozen :class:`Config`."""

from megatron.config.errors import ConfigError
from megatron.config.schema import Config

__all__ = ["Config", "ConfigError"]
