import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

import normexport
from normexport import registry

# Many tests run small float64 convs and gradchecks, which intra-op threads only slow down
# (and make erratic under load) on this 2-core machine.
torch.set_num_threads(1)

CUSTOM_SPECS = [s for s in registry.REGISTRY.values() if isinstance(s.export, registry.CustomOp)]
HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()
PROVIDERS = [
    "CPUExecutionProvider",
    pytest.param("CUDAExecutionProvider", marks=pytest.mark.skipif(
        not HAS_CUDA_EP, reason="no CUDA execution provider (no GPU / onnxruntime-gpu) here")),
]
NP_DTYPES = {"float32": np.float32, "float16": np.float16}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@pytest.fixture(scope="session")
def library():
    """The built op library. Its absence is a failure, not a skip: the install must build it
    (set NORMEXPORT_ALLOW_NO_LIBRARY=1 only on a machine with no compiler or headers)."""
    lib = normexport.library_path()
    if lib is None:
        if os.environ.get("NORMEXPORT_ALLOW_NO_LIBRARY") == "1":
            pytest.skip("op library not built and NORMEXPORT_ALLOW_NO_LIBRARY=1 "
                        f"({normexport.native_info().get('SKIP_REASON')})")
        pytest.fail(f"the normexport op library is not built: {normexport.native_info().get('SKIP_REASON')}")
    return lib


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
