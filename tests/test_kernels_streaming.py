"""The CPU kernels' streaming-store path (custom_ops/include/normexport/cpu_stream.h).

Outputs of at least NORMEXPORT_NT_STORE_BYTES bytes (default: the last-level cache size, read
once per process) are written with non-temporal stores. The tensors of the test suite are far
below the default, so the kernel contract tests run a second time here in a fresh process with
the threshold at 0 (every output streamed): the same float64-reference comparisons, thread-count
invariance, NaN/Inf, large-mean stability and float64 cases must hold on that path too.
custom_ops/tests/core_tests.cc checks that both paths give bit-identical outputs."""

import os
import subprocess
import sys
from pathlib import Path


TESTS = Path(__file__).parent
FILES = ["test_kernels.py", "test_kernels_groupnorm.py", "test_kernels_adain_pono.py", "test_kernels_spade_sn.py"]
SELECT = "native and (contract or threads or stable or large_mean or nan or float64 or split)"


def test_kernel_contracts_with_every_output_streamed(library):
    # `library`: a missing op library fails (conftest), it does not skip
    env = dict(os.environ, NORMEXPORT_NT_STORE_BYTES="0")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", SELECT,
                        *[str(TESTS / f) for f in FILES]], capture_output=True, text=True, env=env, timeout=900,
                       cwd=TESTS.parent)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout, r.stdout[-2000:]
