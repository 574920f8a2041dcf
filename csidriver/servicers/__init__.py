"""The gRPC edge: protobuf in, domain values to services, domain errors out as gRPC status codes."""
