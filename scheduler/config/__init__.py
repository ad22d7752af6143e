"""Config files: models (what a file may say) and loading (from YAML, with line numbers)."""
