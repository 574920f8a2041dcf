"""Use cases of the driver (provision, capacity, publish), free of gRPC and of the Kubernetes client."""
