"""Mixup-privacy lab: privacy-preserving segmentation of 3D brain MRI by mixing (the library behind ``app.py``).

Importing the package asks PyTorch for transparent huge pages for its CPU tensors of 2 MB and more
(``THP_MEM_ALLOC_ENABLE=1``, PyTorch's own switch; see :data:`mixdemo.inference.HUGE_PAGES_ENV`). It is
set here because PyTorch reads it once, at the process's first tensor; a value already in the
environment wins (``THP_MEM_ALLOC_ENABLE=0`` turns it off).
"""

import os as _os

_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
