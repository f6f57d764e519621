"""rain100h: Rain100H / RainTrainH (Yang et al., JORDER, CVPR 2017), read from a manual_dir."""
