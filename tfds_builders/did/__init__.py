"""did: DID-MDN rain density data (Zhang & Patel, CVPR 2018), read from a manual_dir."""
