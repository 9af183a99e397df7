"""Client-side pieces: the ProxyCommand helper and the generated ssh_config block."""
