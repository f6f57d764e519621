"""rain100l: Rain100L / RainTrainL (Yang et al., JORDER, CVPR 2017), read from a manual_dir."""
