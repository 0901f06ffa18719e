"""Small building blocks every layer may use: atomic files and config checks (no torch, no Lightning)."""
