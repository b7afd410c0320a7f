"""The operator's exposure dashboard: a web page over the services' gRPC APIs."""
