"""One module per concern of the host's state, each with one @deploy function."""
