"""Code shared by the gateway and the POS agent (settings); it imports neither of them."""
