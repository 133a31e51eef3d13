"""Command-line entry points. Each module has `main(argv=None) -> int`; `tools/X.py` and the
console scripts of setup.py are thin shells over them."""
