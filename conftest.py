# Root conftest: pytest puts this directory on sys.path, so tests import the project's modules directly.
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
