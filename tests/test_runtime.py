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
torch.ones(16 * 2**20)  # 64 MB, written once, then freed
def faults_for_a_smaller_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(12 * 2**20)  # 48 MB, which fits where the 64 MB were
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
# glibc's posix_memalign cannot always put a block of the same size back in its own hole (a
# small chunk allocated in between can pin it), so the probe asks for a smaller one
print(kept, min(faults_for_a_smaller_block() for _ in range(6)))
"""


def probe(**env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_second_large_block_reuses_the_first():
    kept, faults = probe()
    assert kept == "True"
    assert faults < 1000  # 48 MB is 12288 pages: none of them is faulted in again
    kept, faults = probe(ATTNKIT_MALLOC="default")
    assert kept == "False"
    assert faults > 10000  # glibc's default: the block is a fresh mmap, every page faults


HUGE_PROBE = """
import sys
import attnkit  # must not load torch, or huge_pages() would come too late
from attnkit.runtime import huge_pages
loaded_early = "torch" in sys.modules
asked = huge_pages()
import torch
x = torch.ones(16 * 2**20)  # 64 MB, written once
rollup = open("/proc/self/smaps_rollup").read()
huge_kb = int(rollup.split("AnonHugePages:")[1].split()[0])
print(loaded_early, asked, huge_pages(), huge_kb)
"""


def thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "none"
    return text.split("[")[1].split("]")[0]


def huge_probe(**env) -> tuple[str, str, str, int]:
    clean = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", HUGE_PROBE], capture_output=True, text=True,
                         check=True, env={**clean, **env}).stdout.split()
    return out[0], out[1], out[2], int(out[3])


@pytest.mark.skipif(thp_mode() != "madvise", reason="needs Linux with THP in madvise mode")
def test_huge_pages_back_large_tensors_when_asked_before_torch_loads():
    loaded_early, asked, again, huge_kb = huge_probe()
    assert (loaded_early, asked, again) == ("False", "True", "False")  # too late once loaded
    assert huge_kb >= 32 * 1024  # most of the 64 MB tensor is in 2 MB pages
    _, asked, _, huge_kb = huge_probe(ATTNKIT_MALLOC="default")
    assert asked == "False" and huge_kb == 0
    _, asked, _, huge_kb = huge_probe(THP_MEM_ALLOC_ENABLE="0")  # the user's word stands
    assert asked == "False" and huge_kb == 0


def test_only_the_decoding_commands_ask_for_huge_pages(monkeypatch, tmp_path):
    import attnkit.runtime
    from attnkit.cli import main

    calls = []
    monkeypatch.setattr(attnkit.runtime, "huge_pages", lambda: calls.append(1) or False)
    missing = str(tmp_path / "no-such-run")
    assert main(["sample", missing]) != 0  # fails after the setting, on the missing run
    assert calls == [1]
    assert main(["train", "--train.steps=oops"]) != 0
    assert calls == [1]
