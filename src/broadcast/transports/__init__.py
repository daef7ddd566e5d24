"""One module per transport; each only moves events between the broker and its clients."""
