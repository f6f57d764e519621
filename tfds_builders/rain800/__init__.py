"""rain800: the ID-CGAN synthetic pairs (Zhang, Sindagi & Patel, TCSVT 2019), read from a manual_dir."""
