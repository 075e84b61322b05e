"""cardmint.server.api: the gRPC servicers (proto <-> domain), interceptors and wiring."""
