"""real_rain: unpaired real rainy photographs from a folder (manual_dir)."""
