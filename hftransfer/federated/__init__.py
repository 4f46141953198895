"""Federated fine-tuning on Flower: ``hftransfer federate`` (simulation or deployment engine, FedAvg / FedProx)."""
