"""What the gateway and the POS agent share (settings, the log schema), importing nothing of either."""
