"""cityscapes_rain: rain synthesised on Cityscapes (Xu et al., intensity-aware deraining, TIP 2021),
read from a manual_dir."""
