"""agan: the raindrop data of Qian et al. (Attentive GAN, CVPR 2018), read from a manual_dir."""
