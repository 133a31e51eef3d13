import warnings

import pytest
import torch

# megatron-core warns about missing Apex/TE on every import; they are optional GPU extras.
warnings.filterwarnings("ignore", message=".*(Apex|apex|Transformer Engine|transformer_engine).*")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
