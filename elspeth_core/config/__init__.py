"""Pipeline settings: models, loading (YAML, ``${VAR}``, ``ELSPETH_`` overrides) and audit form.

Key contracts and pitfalls are in this package's ``README.md``. Nothing here imports SQLAlchemy or
Prefect, and nothing here looks at the pipeline graph (that is ``elspeth_core.dag``).
"""

from elspeth_core.config.loader import LoadedSettings, load_settings, load_settings_from_dict
from elspeth_core.config.models import (
    AggregationSettings,
    CheckpointSettings,
    CoalesceSettings,
    ConcurrencySettings,
    DatasourceSettings,
    ElspethSettings,
    GateSettings,
    LandscapeExportSettings,
    LandscapeSettings,
    PayloadStoreSettings,
    RateLimitSettings,
    RetrySettings,
    RowPluginSettings,
    ServiceRateLimitSettings,
    SettingsProblems,
    SinkSettings,
    TriggerSettings,
)
from elspeth_core.config.paths import KeyPath, format_key_path
from elspeth_core.config.resolved import (
    CONFIG_HASH_EXCLUDES,
    config_hash,
    diff_settings,
    fingerprint_key,
    fingerprint_secret,
    is_secret_name,
    resolve_for_audit,
)

__all__ = [
    "CONFIG_HASH_EXCLUDES",
    "AggregationSettings",
    "CheckpointSettings",
    "CoalesceSettings",
    "ConcurrencySettings",
    "DatasourceSettings",
    "ElspethSettings",
    "GateSettings",
    "KeyPath",
    "LandscapeExportSettings",
    "LandscapeSettings",
    "LoadedSettings",
    "PayloadStoreSettings",
    "RateLimitSettings",
    "RetrySettings",
    "RowPluginSettings",
    "ServiceRateLimitSettings",
    "SettingsProblems",
    "SinkSettings",
    "TriggerSettings",
    "config_hash",
    "diff_settings",
    "fingerprint_key",
    "fingerprint_secret",
    "format_key_path",
    "is_secret_name",
    "load_settings",
    "load_settings_from_dict",
    "resolve_for_audit",
]
