import os


# never reach for the network in tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


# tiny models run fastest single-threaded, and pytest-xdist already runs one worker per core
torch.set_num_threads(1)
