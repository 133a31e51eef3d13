"""Checkpoint formats: the one owner below training/ and export/, which both import it.

    layout.py        a checkpoint directory (Megatron's layout): iter_*/, release/, the pointer file,
                     config.yaml beside every checkpoint; no torch
    store.py         megatron-core dist_checkpointing (torch_dist): save a state dict with its
                     config.yaml and pointer, read the common state, load model weights
    architecture.py  the model a checkpoint holds: comparing architectures, Megatron-LM checkpoints

What a *training* checkpoint adds (optimizer, scheduler, RNG, TrainState, the RunConfig) and the
layout of a run directory stay in training/ (checkpointing.py, rundir.py); export/ writes its
release checkpoints through this package only.
"""
