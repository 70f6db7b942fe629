# Root conftest: pytest puts this directory on sys.path, so tests import the project's modules directly.
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread and a passive OpenMP wait policy, for the suite and for every subprocess it launches
# (they inherit this environment). The tests use tiny models, for which a second thread buys nothing on a
# quiet machine, while on a busy one OpenMP threads that spin at every barrier compete with the other jobs
# and slow both down several-fold (BENCHMARKS.md, "Threads under load"). Set before torch is imported.
for _var, _value in (("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"), ("OMP_WAIT_POLICY", "PASSIVE")):
    os.environ.setdefault(_var, _value)

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
