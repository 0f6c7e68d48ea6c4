"""Mixup-privacy lab: privacy-preserving segmentation of 3D brain MRI by mixing (the library behind ``app.py``).

Importing the package asks PyTorch for transparent huge pages for its CPU tensors of 2 MB and more
(:data:`HUGE_PAGES_ENV`, PyTorch's own switch). It is set here because PyTorch reads it once, at the
process's first tensor; a value already in the environment wins (``THP_MEM_ALLOC_ENABLE=0`` turns it off).
"""

import os as _os

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"
"""PyTorch's switch for transparent huge pages: each CPU tensor of 2 MB or more aligned to 2 MB and
``madvise(MADV_HUGEPAGE)``-d (Linux); :func:`mixdemo.inference.huge_pages` says whether it is in effect.

A whole-volume pass of S allocates and frees several GB of activations; glibc hands each freed block of
more than 32 MB back to the kernel, and the next one is a fresh mapping that the kernel zero-fills on
first touch: ≈ 1.9 million 4 kB page faults a pass on the phantom grid, with 2 MB pages ≈ 30 thousand
(``python -m mixdemo.bench``: the ``s_memory_budget`` and ``private_k10_memory`` levers)."""

_os.environ.setdefault(HUGE_PAGES_ENV, "1")
