"""``vdm-fast demo``: a class-conditional VDM on scikit-learn's 8x8 digits, trained with the fused
ops, a learned noise schedule and the continuous-time ELBO; evaluated in bits/dim against a
per-pixel baseline; sampled with classifier-free guidance. See ``vdm_fast/demo/train.py``."""
