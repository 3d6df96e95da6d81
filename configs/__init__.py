"""The experiment configurations (TOML), installed as the package ``lesa.configs``."""
