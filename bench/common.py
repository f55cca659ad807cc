"""What the benchmark scripts share: the commit a result was measured at, and the
peak-memory sampler their measuring subprocesses start with."""

from __future__ import annotations

from olica_prune.io.provenance import commit_hash  # noqa: F401  (one lookup for bench and package)


# Python source for a measuring subprocess: ``status(key)`` reads /proc/self/status
# (kB) and a thread keeps the peak of RssAnon in ``peak_anon[0]``. VmHWM is the
# process's peak RSS (ru_maxrss would also carry the parent's peak: Linux hands it
# over on exec after vfork); it counts the mapped safetensors pages, which the
# kernel can drop at will, so the anonymous part is sampled too.
MEMORY_SAMPLER = """
import threading, time
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
peak_anon = [0]
def sample():
    while True:
        peak_anon[0] = max(peak_anon[0], status("RssAnon"))
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
"""
