#!/usr/bin/env python
"""Fine-tune a text classifier while pruning its attention heads and MLP neurons, then export the smaller model.

The script ships with the package as `hf_prune/scripts/fine_tune_and_prune.py` (the `hf-prune` command); this file
runs it from a checkout. Its module docstring has more command lines; `--help` lists every flag.

```bash
HF_HUB_OFFLINE=1 python examples/fine_tune_and_prune.py            # the embedded model and data, offline
python examples/fine_tune_and_prune.py --train_file train.csv --validation_file dev.csv --text_column text \
    --label_column label --method bmrs --output_dir out/my_run
python examples/fine_tune_and_prune.py args.yaml                   # the same from a file: keys are flag names
```
"""

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hf_prune.scripts.fine_tune_and_prune import main, make_parser  # noqa: E402


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
