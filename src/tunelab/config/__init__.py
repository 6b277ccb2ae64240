from .load import ConfigError, apply_overrides, dump_config, load_config
from .schema import TunelabConfig, default

__all__ = ["ConfigError", "TunelabConfig", "apply_overrides", "default", "dump_config", "load_config"]
