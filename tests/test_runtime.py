"""attnkit.runtime.keep_freed_memory: freed memory is reused instead of faulted in again."""

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import torch
from attnkit.runtime import keep_freed_memory
kept = keep_freed_memory()
def faults_for_a_fresh_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20)  # 64 MB, written once, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
# the first block is always faulted in; a small allocation in between can take the start of
# a freed block and push the next one past it, so the steady state is the least of a few
print(kept, min(faults_for_a_fresh_block() for _ in range(6)))
"""


def probe(**env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_second_large_block_reuses_the_first():
    kept, faults = probe()
    assert kept == "True"
    assert faults < 1000  # 64 MB is 16384 pages: none of them is faulted in again
    kept, faults = probe(ATTNKIT_MALLOC="default")
    assert kept == "False"
    assert faults > 10000  # glibc's default: the block is a fresh mmap, every page faults
