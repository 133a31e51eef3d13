"""Analysis tooling: the two-stage study grid and its results table and plots (`study`,
`results`, `plots`), FFN neuron activation shares (`activation`), and atomic file writes (`io`).

These modules only read what the trainer writes (SAVE/metrics.jsonl, SAVE/compute.json,
checkpoints) and launch tools/pretrain.py; they change nothing in the model or the loop.
"""
