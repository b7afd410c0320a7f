"""``python -m services.training``: one training run (a container's command, a CronJob's)."""

import os

# Before numpy/scipy load their BLAS: implicit's ALS threads its own solver, BLAS threads on top
# only contend (as in services/ranking/__main__.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from services.training.job import main

if __name__ == "__main__":
    main()
