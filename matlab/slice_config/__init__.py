"""What users write: slice configs (schema), their weight formats, their validation against an
architecture, Google's CSV, and the bundled config sets and suites by name.

The schema's public names are re-exported here: `from matlab.slice_config import
load_slice_config` is the import the README shows.
"""

from matlab.slice_config.fields import format_validation_error
from matlab.slice_config.schema import (
    Reference,
    SliceConfig,
    WidthRun,
    dump_slice_config,
    load_slice_config,
    parse_slice_config,
)
from matlab.util.runs import width_runs

__all__ = ["Reference", "SliceConfig", "WidthRun", "dump_slice_config", "format_validation_error",
           "load_slice_config", "parse_slice_config", "width_runs"]
