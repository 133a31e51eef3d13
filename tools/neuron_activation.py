"""FFN neuron activation per layer (the paper's Fig. 8): see megatron_patch/cli/neuron_activation.py."""
import sys

from megatron_patch.cli.neuron_activation import main

if __name__ == "__main__":
    sys.exit(main())
