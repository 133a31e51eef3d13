"""Analysis of finished runs: the two-stage study grid (`grid`: which runs; `study`: launching
them), its results table and plots (`results`, `plots`), the regime map over several studies
(`regime`), FFN neuron activation shares and their tables (`activation`,
`activation_report`), and the CPU demo's report (`demo`).

These modules only read what the trainer writes (SAVE/metrics.jsonl, SAVE/compute.json,
checkpoints; training/rundir.py knows where) and launch tools/pretrain.py; they change nothing
in the model or the loop.
"""
