"""Names shared across hf_prune: the unit kinds, the gate's module name, the pruning config's file name."""

HEADS, NEURONS = "heads", "neurons"  # the two unit kinds: attention heads (key/value groups under GQA), MLP neurons
GATE_NAME = "hf_prune_gate"  # the gate's attribute on the projection it acts on (`...o_proj.hf_prune_gate`)
CONFIG_NAME = "pruning_config.json"  # saved next to models and checkpoints
