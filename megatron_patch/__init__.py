"""megatron-patch: patch-level training (Shao, Meng, Zhou 2024) on megatron-core."""
