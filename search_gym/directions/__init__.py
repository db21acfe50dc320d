"""Direction toolkit: the residual-stream direction of harmful search, layer choice, steering and drift."""
