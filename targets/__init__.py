# Target profiles are data (*.toml); this file only lets them ship inside the wheel as pema_export.targets.
