"""Autoregressive (chunked) video on the bench: the diffusion-forcing group runner and its caches."""
