import os
import sys

# numpy's OpenBLAS would start one spinning thread per core for every matrix product (semantic
# routing's MiniLM, coordinator/minilm.py): on a loaded 2-core box one short query took 1 s
# instead of 15 ms.  The node's heavy compute (llama.cpp, torch) has its own thread pools.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .cli import main  # noqa: E402

sys.exit(main())
