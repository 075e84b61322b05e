"""cardmint.client: the Python gRPC client of the cardmint server (built with the server)."""
