#!/usr/bin/env python
"""Fine-tune a text classifier while pruning its attention heads and MLP neurons, then export the smaller model.

This script is the `hf-prune` console command (its code lives in `hf_prune/cli.py`, so both stay identical):

```bash
HF_HUB_OFFLINE=1 python examples/fine_tune_and_prune.py            # the embedded model and data, offline
python examples/fine_tune_and_prune.py --train_file train.csv --validation_file dev.csv --text_column text \
    --label_column label --method bmrs --output_dir out/my_run
python examples/fine_tune_and_prune.py --help                      # every flag, and the methods
```
"""

from hf_prune.cli import *  # noqa: F403  (re-exported for tests and for reading the flow in one place)
from hf_prune.cli import main


if __name__ == "__main__":
    main()
