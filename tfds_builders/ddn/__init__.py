"""ddn: DDN-Data / Rain14000 (Fu et al., CVPR 2017), read from a manual_dir."""
