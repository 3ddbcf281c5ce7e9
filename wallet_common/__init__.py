"""What the gateway and the POS agent share, importing nothing of either (the counter box has no gateway deps)."""
