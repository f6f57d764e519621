"""synthetic_rain: the embedded default dataset."""
